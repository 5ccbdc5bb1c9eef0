//! W3C Trace Context (`traceparent`) for HTTP and Kafka headers: parse what a caller sent,
//! start a child span id for our own hop, or start a new trace.
//!
//! Ids use OpenTelemetry's types so they hand over to the SDK unchanged.

use std::fmt;

pub use opentelemetry::trace::{SpanId, TraceId};
use rand::RngCore;

/// The parsed value of a `traceparent` header (version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` header. Invalid values (wrong length, non-hex, all-zero ids,
    /// version `ff`) give `None`, as the spec says: the receiver then starts a new trace.
    pub fn parse(header: &str) -> Option<Self> {
        let h = header.trim();
        let mut parts = h.splitn(4, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let rest = parts.next()?;
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more after flags.
        let flags = if version == "00" {
            if rest.len() != 2 {
                return None;
            }
            rest
        } else {
            rest.get(..2)?
        };
        if trace.len() != 32
            || span.len() != 16
            || !is_lower_hex(trace)
            || !is_lower_hex(span)
            || !is_lower_hex(flags)
        {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace with a random trace id and span id.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        let mut t = [0u8; 16];
        loop {
            rng.fill_bytes(&mut t);
            if t != [0; 16] {
                break;
            }
        }
        Self {
            trace_id: TraceId::from_bytes(t),
            span_id: random_span_id(),
            sampled: true,
        }
    }

    /// The same trace, with a fresh span id for the next hop.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span_id(),
            ..*self
        }
    }

    /// Continues `header` if it is a valid traceparent, otherwise starts a new trace.
    pub fn continue_or_new(header: Option<&str>) -> Self {
        header
            .and_then(Self::parse)
            .map(|p| p.child())
            .unwrap_or_else(Self::new_root)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn random_span_id() -> SpanId {
    let mut rng = rand::rng();
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return SpanId::from_bytes(v.to_be_bytes());
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_spec_example() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.sampled);
        assert_eq!(p.to_string(), EXAMPLE);
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn continuing_keeps_the_trace_and_changes_the_span() {
        let c = TraceParent::continue_or_new(Some(EXAMPLE));
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(format!("{:016x}", c.span_id), "00f067aa0ba902b7");
        let fresh = TraceParent::continue_or_new(Some("garbage"));
        assert_ne!(fresh.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(TraceParent::parse(&fresh.to_string()), Some(fresh));
    }
}
