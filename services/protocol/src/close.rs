//! The WebSocket close codes a gateway sends, and when (docs/PROTOCOL.md,
//! "Close codes"). Clients decide from the code whether reconnecting can help.

/// Why a gateway closed a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// A frame the WebSocket protocol itself forbids (e.g. an unexpected
    /// continuation); not worth a reconnect with the same client.
    ProtocolError = 1002,
    /// A text frame that is not UTF-8.
    InvalidData = 1007,
    /// Policy: a wrong token, an unknown session, an unusable `after_seq` in
    /// the URL. Reconnecting with the same credentials cannot help.
    PolicyViolation = 1008,
    /// A frame larger than the gateway's `--max-frame-bytes`.
    TooBig = 1009,
    /// The gateway is shutting down: reconnect (through Nginx) with `after_seq`.
    ServiceRestart = 1012,
    /// Try again later: a write blocked for the write timeout, the live feed
    /// or a replay failed (NATS trouble). Reconnect with `after_seq`.
    TryAgainLater = 1013,
}

impl CloseCode {
    /// Every code, for documents and for tests that mirror the list elsewhere.
    pub const ALL: [CloseCode; 6] = [
        CloseCode::ProtocolError,
        CloseCode::InvalidData,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::ServiceRestart,
        CloseCode::TryAgainLater,
    ];

    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The constant's name in `web/src/chat/protocol.ts` (SCREAMING_SNAKE).
    pub const fn name(self) -> &'static str {
        match self {
            CloseCode::ProtocolError => "PROTOCOL_ERROR",
            CloseCode::InvalidData => "INVALID_DATA",
            CloseCode::PolicyViolation => "POLICY_VIOLATION",
            CloseCode::TooBig => "TOO_BIG",
            CloseCode::ServiceRestart => "SERVICE_RESTART",
            CloseCode::TryAgainLater => "TRY_AGAIN_LATER",
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.code()
    }
}

impl PartialEq<CloseCode> for u16 {
    fn eq(&self, other: &CloseCode) -> bool {
        *self == other.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        let mut numbers: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::from_code(1000), None);
        assert!(1012u16 == CloseCode::ServiceRestart);
    }
}
