//! NATS header names Switchyard sets and reads.

/// JetStream deduplication id: always the request id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context, carried from the HTTP request into workers.
pub const TRACEPARENT: &str = "traceparent";
/// Why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "Switchyard-Reason";
/// The stream and consumer a dead-lettered message came from.
pub const DEAD_LETTER_SOURCE: &str = "Switchyard-Source";
/// The request a dead-lettered message belongs to, when it could be read.
pub const REQUEST_ID: &str = "Switchyard-Request-Id";

/// Whether `value` is a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`);
/// anything else from a caller is dropped rather than carried along.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_shape_is_checked() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
        ));
        assert!(!is_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX: y"
        ));
    }
}
