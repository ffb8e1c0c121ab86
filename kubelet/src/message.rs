//! Messages the node writes into the API (container states, the pod's status, events),
//! held to a size. A guest chooses some of their text (a trap's or a host error's
//! backtrace, with its function names), and a status or event too large for the API server
//! would be refused again at every try, leaving the pod's status stale.

/// The longest message written: the kubelet's cap on a container's termination message.
pub(crate) const MAX_MESSAGE_BYTES: usize = 4096;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] on a character boundary, with `…` to say so.
pub(crate) fn capped(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    const MARK: &str = "…";
    let limit = MAX_MESSAGE_BYTES.saturating_sub(MARK.len());
    let end = (0..=limit)
        .rev()
        .find(|&i| message.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}{MARK}", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(capped("wasm trap: unreachable"), "wasm trap: unreachable");
        let exact = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(capped(&exact), exact);
        // Two-byte characters, so the cut lands inside one unless it steps back.
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = capped(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
        assert!(cut.len() >= MAX_MESSAGE_BYTES - 4);
    }
}
