//! What the media side asks of the SIP server — INVITE a channel, hang up — and what it hears
//! back about the dialog. The SIP server task owns every dialog (it owns the transports and
//! the device sessions); a player holds only the Call-ID and its events channel.

use tokio::sync::mpsc;

/// A request to the SIP server about a media dialog.
#[derive(Debug)]
pub enum Command {
    /// INVITE `channel` (addressed through the registered `device`) with `sdp`; `ssrc` is the
    /// `y=` offered (it goes in the Subject header).
    Invite {
        call_id: String,
        device: String,
        channel: String,
        sdp: String,
        ssrc: String,
        events: mpsc::Sender<DialogEvent>,
    },
    /// End the dialog: BYE once confirmed, CANCEL while the INVITE is pending.
    Hangup { call_id: String },
}

/// What became of an INVITE, and of the dialog after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogEvent {
    /// A provisional answer (100 Trying, 180, 183).
    Provisional(u16),
    /// 200 with the device's SDP; vigil has sent the ACK.
    Answered { sdp: String },
    /// A final refusal: the code and the reason phrase (and Warning, where sent).
    Refused { code: u16, reason: String },
    /// The device has no SIP session (not registered, or expired).
    NotRegistered,
    /// No final answer within Timer B.
    NoAnswer,
    /// The device sent BYE.
    ByeFromDevice,
}

/// Events a player may have waiting.
pub const EVENTS: usize = 8;
