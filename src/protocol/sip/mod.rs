//! SIP as GB/T 28181 uses it (RFC 3261): the message parser and writer (`message`), the
//! header syntax checks that refuse what could be read two ways (`syntax`), and client
//! transactions with their timers (`transactions`).

pub mod message;
pub mod syntax;
pub mod transactions;
