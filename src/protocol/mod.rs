//! Pure protocol codecs that both directions use — vigil is a platform to its devices and a
//! device to its upper platforms: SIP (message, syntax checks, client transactions), HTTP
//! digest (SIP REGISTER and GA/T 1400 both), MANSCDP, SDP with the GB/T 28181 `y=` and `f=`
//! lines, RTP (TCP framings, reorder window, receiver reports), H.264/H.265 over RTP (RFC 6184,
//! RFC 7798), the MPEG program stream of GB/T 28181 video (PS demux, access units), the GA/T 1400 codec and subscriptions, and the
//! MQTT 3.1.1 packets the broker's gate reads. Bytes in, typed values out: no tasks, no
//! database, no sockets; time comes in as an argument. Nothing here imports anything of ours
//! above the bottom floor (`clock`, `event`).

pub mod digest;
pub mod gat1400;
pub mod manscdp;
pub mod mqtt;
pub mod ps;
pub mod rtp;
pub mod rtp_h26x;
pub mod sdp;
pub mod sip;
