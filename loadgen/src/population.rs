//! Who talks to whom: users grouped into conversations, from a size mix and a seed.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::target::Population;
use crate::util::{SplitMix64, derive_seed};

/// Conversation sizes as `size:percent-of-users` pairs, e.g. `2:60,5:30,50:10`; a bare `K`
/// means every user is in a conversation of size K.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMix(pub Vec<(usize, f64)>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PopulationError {
    #[error("invalid group size mix {0:?}: {1}")]
    BadMix(String, String),
    #[error("{0}")]
    TooFewUsers(String),
}

impl FromStr for GroupMix {
    type Err = PopulationError;
    fn from_str(s: &str) -> Result<GroupMix, PopulationError> {
        let bad = |why: &str| PopulationError::BadMix(s.to_string(), why.to_string());
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, pct) = match part.split_once(':') {
                Some((a, b)) => (a.trim(), b.trim().trim_end_matches('%')),
                None => (part, "100"),
            };
            let size: usize = size.parse().map_err(|_| bad("size is not a number"))?;
            let pct: f64 = pct.parse().map_err(|_| bad("percent is not a number"))?;
            if size < 2 {
                return Err(bad("a conversation has at least 2 members"));
            }
            if !(pct > 0.0 && pct <= 100.0) {
                return Err(bad("percent must be in (0, 100]"));
            }
            out.push((size, pct));
        }
        if out.is_empty() {
            return Err(bad("empty"));
        }
        let total: f64 = out.iter().map(|(_, p)| p).sum();
        if (total - 100.0).abs() > 0.01 {
            return Err(bad(&format!("percentages add up to {total}, not 100")));
        }
        Ok(GroupMix(out))
    }
}

impl std::fmt::Display for GroupMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(s, p)| format!("{s}:{p}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Users (shuffled with `seed`) are cut into conversations: each mix entry takes its share of
/// users and cuts it into conversations of its size. A remainder of 2 or more becomes one
/// smaller conversation; a remainder of 1 joins the last conversation made. So every user is in
/// exactly one conversation and sizes are as asked except for at most one per entry.
pub fn mixed(users: usize, mix: &GroupMix, seed: u64) -> Result<Population, PopulationError> {
    if users < 2 {
        return Err(PopulationError::TooFewUsers(
            "conversations need at least 2 users".into(),
        ));
    }
    let mut order: Vec<usize> = (0..users).collect();
    SplitMix64::new(derive_seed(seed, 0x9090)).shuffle(&mut order);
    let mut conversations: Vec<Vec<usize>> = Vec::new();
    let mut next = 0usize;
    for (i, &(size, pct)) in mix.0.iter().enumerate() {
        let share = if i + 1 == mix.0.len() {
            users - next
        } else {
            ((users as f64 * pct / 100.0).round() as usize).min(users - next)
        };
        let mut taken = &order[next..next + share];
        next += share;
        while taken.len() >= size {
            conversations.push(taken[..size].to_vec());
            taken = &taken[size..];
        }
        match taken.len() {
            0 => {}
            1 => match conversations.last_mut() {
                Some(last) => last.push(taken[0]),
                // First entry with a single user: carried into the next entry's share.
                None => next -= 1,
            },
            _ => conversations.push(taken.to_vec()),
        }
    }
    if next < users {
        // Only possible when the single leftover user could join nothing.
        match conversations.last_mut() {
            Some(last) => last.extend_from_slice(&order[next..]),
            None => {
                return Err(PopulationError::TooFewUsers(
                    "could not form any conversation".into(),
                ));
            }
        }
    }
    for c in &mut conversations {
        c.sort_unstable();
    }
    Ok(Population {
        users,
        conversations,
    })
}

/// Users only (the connect scenario).
pub fn without_conversations(users: usize) -> Population {
    Population {
        users,
        conversations: Vec::new(),
    }
}

/// For each user, the indexes of its conversations.
pub fn conversations_of(p: &Population) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); p.users];
    for (ci, members) in p.conversations.iter().enumerate() {
        for &u in members {
            if let Some(v) = out.get_mut(u) {
                v.push(ci);
            }
        }
    }
    out
}

/// (sender, conversation) pairs that the schedule picks from: every membership, or only the
/// first `per_conversation` members of each conversation (fan-out: few speakers, many
/// listeners).
pub fn eligible_senders(p: &Population, per_conversation: Option<usize>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (ci, members) in p.conversations.iter().enumerate() {
        let n = per_conversation.unwrap_or(members.len()).min(members.len());
        for &u in &members[..n] {
            out.push((u as u32, ci as u32));
        }
    }
    out
}

/// A short stable hash of the population's shape: the key of cached setup state.
pub fn fingerprint(p: &Population) -> String {
    let mut h = Sha256::new();
    h.update((p.users as u64).to_le_bytes());
    for c in &p.conversations {
        h.update((c.len() as u64).to_le_bytes());
        for &u in c {
            h.update((u as u64).to_le_bytes());
        }
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixes() {
        let m: GroupMix = "2:60,5:30,50:10".parse().unwrap();
        assert_eq!(m.0, vec![(2, 60.0), (5, 30.0), (50, 10.0)]);
        assert_eq!("7".parse::<GroupMix>().unwrap().0, vec![(7, 100.0)]);
        assert!("2:60,5:30".parse::<GroupMix>().is_err());
        assert!("1:100".parse::<GroupMix>().is_err());
        assert!("x:100".parse::<GroupMix>().is_err());
    }

    #[test]
    fn every_user_in_exactly_one_conversation() {
        for users in [2, 3, 7, 100, 301, 1000] {
            let m: GroupMix = "2:60,5:30,50:10".parse().unwrap();
            let p = mixed(users, &m, 5).unwrap();
            let per_user = conversations_of(&p);
            assert!(per_user.iter().all(|c| c.len() == 1), "users={users}");
            assert!(p.conversations.iter().all(|c| c.len() >= 2));
        }
        let p = mixed(1000, &"2:60,5:30,50:10".parse().unwrap(), 5).unwrap();
        let count = |size: usize| p.conversations.iter().filter(|c| c.len() == size).count();
        assert_eq!(count(2), 300);
        assert_eq!(count(5), 60);
        assert_eq!(count(50), 2);
    }

    #[test]
    fn deterministic_and_seeded() {
        let m: GroupMix = "2:50,10:50".parse().unwrap();
        assert_eq!(
            mixed(200, &m, 1).unwrap().conversations,
            mixed(200, &m, 1).unwrap().conversations
        );
        assert_ne!(
            fingerprint(&mixed(200, &m, 1).unwrap()),
            fingerprint(&mixed(200, &m, 2).unwrap())
        );
    }

    #[test]
    fn eligible_limits_speakers() {
        let p = mixed(100, &"10".parse().unwrap(), 1).unwrap();
        assert_eq!(eligible_senders(&p, None).len(), 100);
        let e = eligible_senders(&p, Some(2));
        assert_eq!(e.len(), 20);
        assert!(
            e.iter()
                .all(|&(u, c)| p.conversations[c as usize].contains(&(u as usize)))
        );
    }
}
