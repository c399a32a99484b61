//! The memory request bodies may hold while they are read, before anyone knows
//! whether they are authentic.
//!
//! A body must be read whole before its signature can be checked, so a stranger
//! who opens many connections and sends most of a large body on each makes the
//! relay hold all of it. Every body in flight therefore reserves its bytes from
//! one budget (`HOOKRELAY_BODY_BUDGET`) and from its client's share of it
//! (`HOOKRELAY_BODY_BUDGET_PER_CLIENT`): past the share the client gets 429, past
//! the budget everybody gets 503, at once and without the body being read, and
//! the bytes are given back when the request ends. One client's flood leaves the
//! others their room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Why a body may not be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The bodies in flight hold the whole budget.
    #[error(
        "the relay holds as many request bodies in memory as it may ({0} bytes, HOOKRELAY_BODY_BUDGET); retry in a moment"
    )]
    Full(usize),
    /// This client's bodies in flight hold its share.
    #[error(
        "this client holds its share of the relay's memory for request bodies ({0} bytes, HOOKRELAY_BODY_BUDGET_PER_CLIENT); retry in a moment"
    )]
    Share(usize),
}

/// The budget of the bodies in flight; shared behind an `Arc`.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    total: usize,
    per_client: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    used: usize,
    by_client: HashMap<IpAddr, usize>,
}

impl BodyBudget {
    /// A budget of `total` bytes, of which one client may hold `per_client`.
    pub(crate) fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_client,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `bytes` for a body of `client`; given back when the reservation is
    /// dropped.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        client: IpAddr,
        bytes: usize,
    ) -> Result<Reservation, Refusal> {
        let mut reservation = Reservation {
            budget: Arc::clone(self),
            client,
            bytes: 0,
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    /// Bytes reserved now, in all.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.state().used
    }
}

/// Bytes a body holds of the budget.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BodyBudget>,
    client: IpAddr,
    bytes: usize,
}

impl Reservation {
    /// Bytes reserved.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Reserves `more` bytes, or none of them.
    pub(crate) fn grow(&mut self, more: usize) -> Result<(), Refusal> {
        if more == 0 {
            return Ok(());
        }
        let budget = &self.budget;
        let mut state = budget.state();
        let held = state.by_client.get(&self.client).copied().unwrap_or(0);
        if held + more > budget.per_client {
            return Err(Refusal::Share(budget.per_client));
        }
        if state.used + more > budget.total {
            return Err(Refusal::Full(budget.total));
        }
        state.used += more;
        *state.by_client.entry(self.client).or_default() += more;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut state = self.budget.state();
        state.used = state.used.saturating_sub(self.bytes);
        if let Some(held) = state.by_client.get_mut(&self.client) {
            *held = held.saturating_sub(self.bytes);
            if *held == 0 {
                state.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_client_fills_its_share_and_leaves_the_others_their_room() {
        let budget = BodyBudget::new(100, 40);
        let first = budget.reserve(ip(1), 30).expect("room");
        assert_eq!(budget.reserve(ip(1), 20).err(), Some(Refusal::Share(40)));
        let second = budget.reserve(ip(2), 40).expect("another client's share");
        assert_eq!(budget.reserve(ip(3), 31).err(), Some(Refusal::Full(100)));
        let third = budget.reserve(ip(3), 30).expect("what is left");
        assert_eq!(budget.used(), 100);
        drop((first, second, third));
        assert_eq!(budget.used(), 0, "every byte given back");
    }

    #[test]
    fn a_body_grows_its_reservation_as_it_arrives_and_gives_it_all_back() {
        let budget = BodyBudget::new(100, 200);
        let mut body = budget.reserve(ip(1), 0).expect("nothing yet");
        body.grow(60).expect("room");
        assert_eq!(body.grow(50), Err(Refusal::Full(100)));
        assert_eq!(body.bytes(), 60, "a refused growth takes nothing");
        drop(body);
        assert_eq!(budget.used(), 0);
    }
}
