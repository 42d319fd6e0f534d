//! A test-only filter on the peer links of one node, in the manner of tikv's transport filters: it
//! can cut the link to a peer or delay it, in both directions, inside the node's own transport, so
//! partition tests need no Docker and no packet filter.
//!
//! Built only with the `fault-injection` feature (like `fault`); without it [`LinkFilter`] is an
//! empty type whose verdict is always [`Verdict::Pass`], and the variable's name is not in the
//! binary. With it, `DSM_FAULT_LINKS=<file>` names a file the test writes and every node re-reads
//! at most every `armed::REREAD`: one rule a line for the link between two nodes, `cut <a> <b>` or
//! `delay <a> <b> <ms>`; each node applies the rules it is one end of, so one file serves a whole
//! mesh. An absent or empty file passes everything, so a test heals the partition by emptying it.
//!
//! A cut link fails calls to that peer at once (`Unavailable`, as a dead peer would once its
//! connection is gone) and drops that peer's requests unanswered (it sees its deadline pass, as
//! behind a partition). A delayed link waits before sending or before handling.

use std::time::Duration;

/// What the filter does with one message on the link to or from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Cut,
    Delay(Duration),
}

#[cfg(feature = "fault-injection")]
mod armed {
    use super::Verdict;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// How often the rules file is read again.
    pub(crate) const REREAD: Duration = Duration::from_millis(50);

    #[derive(Debug, Default)]
    pub(crate) struct LinkFilter {
        /// This node's id: rules name links by both ends.
        own: String,
        /// The rules file (`DSM_FAULT_LINKS`); `None`: no filter.
        path: Option<PathBuf>,
        /// The rules as last read, and when.
        rules: Mutex<Option<(Instant, HashMap<String, Verdict>)>>,
    }

    impl LinkFilter {
        pub(crate) fn from_env(own: &str) -> LinkFilter {
            LinkFilter {
                own: own.to_owned(),
                path: std::env::var_os("DSM_FAULT_LINKS").map(PathBuf::from),
                rules: Mutex::new(None),
            }
        }

        pub fn verdict(&self, peer: &str) -> Verdict {
            let Some(path) = &self.path else {
                return Verdict::Pass;
            };
            let mut rules = self
                .rules
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if rules.as_ref().is_none_or(|(at, _)| at.elapsed() > REREAD) {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                *rules = Some((Instant::now(), parse(&self.own, &text)));
            }
            rules
                .as_ref()
                .and_then(|(_, r)| r.get(peer).copied())
                .unwrap_or(Verdict::Pass)
        }
    }

    /// The rules of a filter file for node `own`, by peer; lines it cannot read are ignored (a
    /// test writing the file may be caught half-way, which must not cut anything it did not mean).
    pub fn parse(own: &str, text: &str) -> HashMap<String, Verdict> {
        let mut rules = HashMap::new();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (verdict, a, b) = match words.as_slice() {
                ["cut", a, b] => (Verdict::Cut, *a, *b),
                ["delay", a, b, ms] => match ms.parse() {
                    Ok(ms) => (Verdict::Delay(Duration::from_millis(ms)), *a, *b),
                    Err(_) => continue,
                },
                _ => continue,
            };
            let peer = if a == own {
                b
            } else if b == own {
                a
            } else {
                continue;
            };
            rules.insert(peer.to_owned(), verdict);
        }
        rules
    }
}

#[cfg(feature = "fault-injection")]
pub(crate) use armed::LinkFilter;

/// Without `fault-injection`: no filter at all.
#[cfg(not(feature = "fault-injection"))]
#[derive(Debug, Default)]
pub(crate) struct LinkFilter;

#[cfg(not(feature = "fault-injection"))]
impl LinkFilter {
    pub(crate) fn from_env(_own: &str) -> LinkFilter {
        LinkFilter
    }

    #[inline(always)]
    pub fn verdict(&self, _peer: &str) -> Verdict {
        Verdict::Pass
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::Verdict;
    use super::armed::parse;
    use std::time::Duration;

    #[test]
    fn rules_cut_and_delay_the_links_a_node_is_an_end_of_and_ignore_what_they_cannot_read() {
        let file = "cut n1 n2\ndelay n3 n1 250\ndelay n1 n4 soon\ncut n2 n3\nnonsense\n";
        let rules = parse("n1", file);
        assert_eq!(rules.get("n2"), Some(&Verdict::Cut));
        assert_eq!(
            rules.get("n3"),
            Some(&Verdict::Delay(Duration::from_millis(250)))
        );
        assert_eq!(rules.get("n4"), None);
        assert_eq!(rules.len(), 2, "only the links n1 is an end of");
        assert_eq!(parse("n2", file).get("n1"), Some(&Verdict::Cut));
        assert!(parse("n1", "").is_empty());
    }
}
