//! TCP connections opened on this machine over a window, from the kernel's
//! `ActiveOpens` counter (`/proc/net/snmp`). Every connection of the bench
//! stack is local, so each is counted once, by the side that dialled it: the
//! client dialling Nginx, Nginx dialling a gateway. A transport that keeps
//! its connections opens none while it runs; one that needs a request per
//! answer opens some whenever a pool of idle connections runs short.

/// Where the kernel keeps its TCP counters.
const SNMP: &str = "/proc/net/snmp";

/// `ActiveOpens` now, or `None` where the kernel does not say.
pub fn read() -> Option<u64> {
    parse(&std::fs::read_to_string(SNMP).ok()?)
}

/// The `Tcp:` header line names the fields, the next `Tcp:` line holds
/// their values.
fn parse(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let at = names
        .split_whitespace()
        .position(|name| name == "ActiveOpens")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The connections opened between two readings (`None` unless both were
/// read).
pub fn since(after: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_opens_are_read_by_their_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens\n\
                    Tcp: 1 200 120000 -1 1135643 1077409\n\
                    Udp: InDatagrams\nUdp: 5\n";
        assert_eq!(parse(snmp), Some(1_135_643));
        assert_eq!(parse("Tcp: RtoAlgorithm\nTcp: 1\n"), None, "no such field");
        assert_eq!(parse("Ip: 1\n"), None);
        assert_eq!(since(Some(1_000), Some(940)), Some(60));
        assert_eq!(since(Some(1_000), None), None);
        // This machine's kernel has the counter, and it does not go back.
        let now = read().expect("ActiveOpens on this machine");
        let later = read().expect("ActiveOpens on this machine");
        assert!(later >= now);
    }
}
