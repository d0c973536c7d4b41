//! Why a call to an upstream failed as a whole, typed: every sink answers a `SinkError`
//! whose `kind` the runner reads to label the failure metric, raise the operator alarm and
//! decide nothing else (a failed call never drops a record: the batch stays in the outbox and
//! the runner waits with backoff). The message is what the API and the logs show.

/// The low-cardinality reason of a failed call: the `reason` label of
/// `vigil_relay_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// The upstream refused our credentials or session.
    Unauthorized,
    /// Cannot connect, resolve or keep a connection.
    Unreachable,
    /// The upstream answered, but refused the call (a status, a refusal code, a bad answer).
    Refused,
    /// An upper view library's subscription ended while records wait: an alarm.
    SubscriptionLapsed,
    /// No upper has subscribed yet (subscription mode): the quiet wait before the first.
    NotSubscribed,
    /// Something on vigil's side (a picture or a table it could not read).
    Local,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Refused => "refused",
            FailureKind::SubscriptionLapsed => "subscription_lapsed",
            FailureKind::NotSubscribed => "not_subscribed",
            FailureKind::Local => "local",
        }
    }

    /// A condition an operator must act on while it lasts.
    pub fn is_alarm(self) -> bool {
        self == FailureKind::SubscriptionLapsed
    }
}

/// A failed call to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: FailureKind,
    pub message: String,
}

impl SinkError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        SinkError { kind, message: message.into() }
    }

    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The same failure, its message prefixed with what was being done (`registration: ...`).
    pub fn during(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_kind_through_context_and_only_a_lapse_is_an_alarm() {
        let e = SinkError::new(FailureKind::Unauthorized, "401").during("registration");
        assert_eq!((e.kind().label(), e.to_string().as_str()), ("unauthorized", "registration: 401"));
        let kinds = [
            FailureKind::Timeout,
            FailureKind::Unauthorized,
            FailureKind::Unreachable,
            FailureKind::Refused,
            FailureKind::SubscriptionLapsed,
            FailureKind::NotSubscribed,
            FailureKind::Local,
        ];
        assert_eq!(kinds.iter().filter(|k| k.is_alarm()).count(), 1);
        let labels: std::collections::HashSet<_> = kinds.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), kinds.len(), "labels are distinct");
    }
}
