//! Which members a member takes events from, and the subscriptions that bring them.
//!
//! As LXD: without event hubs every member takes the events that happen on every other member;
//! with hubs (members with the `event-hub` role), each hub takes every member's events and the
//! other members take everything from one hub. Lifecycle events travel only to a member whose
//! copy of the log does not follow (a spare): every replica derives them itself.
//!
//! [`plan`] is the decision (pure); [`run`] keeps one task per planned subscription, each
//! reading from its member (the next candidate when one fails) onto this member's bus.

use std::collections::HashMap;
use std::time::Duration;

use super::bus::Source;
use super::monitor::{Want, KEEPALIVE};
use crate::member::Member;
use crate::protocol::{Reply, Request};

/// How often the plan is looked at again.
const REPLAN_EVERY: Duration = Duration::from_millis(250);
/// The wait before a failed subscription tries its next candidate.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// A member as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Whether it has the `event-hub` role.
    pub hub: bool,
}

/// One subscription: from the first of `from` that answers (name, address), what `want` says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subscription {
    /// Candidates, in order.
    pub from: Vec<(String, String)>,
    /// What it takes.
    pub want: Want,
}

/// The subscriptions member `me` needs. `follows`: its copy of the log follows the leader's
/// (else lifecycle events come from `leader`, a replica).
pub fn plan(me: &str, members: &[Peer], follows: bool, leader: Option<&Peer>) -> Vec<Subscription> {
    let others: Vec<&Peer> = members.iter().filter(|peer| peer.name != me).collect();
    let me_hub = members.iter().any(|peer| peer.name == me && peer.hub);
    let hubs: Vec<&Peer> = others.iter().copied().filter(|peer| peer.hub).collect();
    let endpoint = |peer: &Peer| (peer.name.clone(), peer.address.clone());
    if !hubs.is_empty() && !me_hub {
        // Everything from one hub (the next when it fails), lifecycle events too when the log
        // does not follow here... a hub that is a spare has them only relayed, which it passes on.
        return vec![Subscription {
            from: hubs.into_iter().map(endpoint).collect(),
            want: Want {
                own: true,
                relayed: true,
                derived: !follows,
            },
        }];
    }
    let mut subscriptions: Vec<Subscription> = others
        .iter()
        .map(|peer| Subscription {
            from: vec![endpoint(peer)],
            want: Want {
                own: true,
                relayed: false,
                derived: false,
            },
        })
        .collect();
    if !follows {
        if let Some(leader) = leader.filter(|leader| leader.name != me) {
            subscriptions.push(Subscription {
                from: vec![endpoint(leader)],
                want: Want {
                    own: false,
                    relayed: false,
                    derived: true,
                },
            });
        }
    }
    subscriptions
}

/// This member's view of the members, for [`plan`].
fn peers(member: &Member) -> Vec<Peer> {
    member.local_state(|state| {
        state
            .members
            .values()
            .map(|record| Peer {
                name: record.name.clone(),
                address: record.address.clone(),
                hub: record.user_roles.iter().any(|role| role == "event-hub"),
            })
            .collect()
    })
}

/// Keeps the planned subscriptions running while the member runs.
pub(crate) async fn run(member: Member) {
    let mut running: HashMap<Subscription, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let members = peers(&member);
        let me = member.name();
        let leader_name = member.leader_name();
        let leader = members
            .iter()
            .find(|peer| Some(&peer.name) == leader_name.as_ref())
            .cloned();
        let planned = plan(&me, &members, member.state_follows(), leader.as_ref());
        running.retain(|subscription, task| {
            let keep = planned.contains(subscription) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for subscription in planned {
            if running.contains_key(&subscription) {
                continue;
            }
            let task = tokio::spawn(subscribe(member.clone(), subscription.clone()));
            running.insert(subscription, task);
        }
        tokio::select! {
            _ = tokio::time::sleep(REPLAN_EVERY) => {}
            _ = member.stopping() => break,
        }
    }
    for task in running.into_values() {
        task.abort();
    }
}

/// Reads one subscription onto the bus, from its candidates in turn, until aborted.
async fn subscribe(member: Member, subscription: Subscription) {
    for (name, address) in subscription.from.iter().cycle() {
        if let Err(error) = relay_from(&member, name, address, &subscription.want).await {
            tracing::debug!(from = %name, %error, "an event subscription ended");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_AFTER) => {}
            _ = member.stopping() => return,
        }
    }
}

async fn relay_from(
    member: &Member,
    name: &str,
    address: &str,
    want: &Want,
) -> Result<(), crate::Error> {
    let request = Request::Events {
        subscriber: member.name(),
        want: want.clone(),
    };
    let mut stream = member.request_stream(address, &request).await?;
    loop {
        // Keepalives come every few seconds: silence this long means the member is gone.
        match stream.next::<Reply>(KEEPALIVE * 3).await? {
            Some(Reply::Event(event)) => {
                // The member whose bus had it first: a log-derived event is the sender's; any
                // other happened where it says (relayed by a hub or not).
                let (source, origin) = if event.kind == super::EventType::Lifecycle {
                    // Only a member whose log does not follow asks for these; one that
                    // follows again derives them itself.
                    if member.state_follows() {
                        continue;
                    }
                    (Source::Derived, name.to_string())
                } else {
                    (Source::Relayed, event.location.clone())
                };
                member.inner.events.publish(event, source, &origin);
            }
            Some(Reply::Ack) => {}
            Some(Reply::Refused(error)) => return Err(error),
            Some(other) => {
                return Err(crate::Error::Internal(format!(
                    "unexpected reply to an event subscription: {other:?}"
                )))
            }
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, hub: bool) -> Peer {
        Peer {
            name: name.into(),
            address: format!("{name}:7443"),
            hub,
        }
    }

    fn sources(subscriptions: &[Subscription]) -> Vec<Vec<String>> {
        subscriptions
            .iter()
            .map(|subscription| {
                subscription
                    .from
                    .iter()
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .collect()
    }

    /// Goal: without hubs a member takes each other member's own events; with hubs, a hub
    /// takes every member's and any other member takes everything from a hub (the others
    /// as fallbacks); a member whose log does not follow also takes lifecycle events.
    #[test]
    fn members_take_events_as_lxd_relays_them() {
        let flat = [peer("m1", false), peer("m2", false), peer("m3", false)];
        let planned = plan("m1", &flat, true, Some(&flat[0]));
        assert_eq!(sources(&planned), [vec!["m2"], vec!["m3"]]);
        assert!(planned.iter().all(|subscription| subscription.want
            == Want {
                own: true,
                relayed: false,
                derived: false
            }));

        let hubs = [
            peer("m1", false),
            peer("m2", true),
            peer("m3", true),
            peer("m4", false),
        ];
        let planned = plan("m1", &hubs, true, Some(&hubs[1]));
        assert_eq!(sources(&planned), [vec!["m2", "m3"]]);
        assert!(planned[0].want.relayed && planned[0].want.own && !planned[0].want.derived);
        let planned = plan("m2", &hubs, true, Some(&hubs[1]));
        assert_eq!(sources(&planned), [vec!["m1"], vec!["m3"], vec!["m4"]]);

        // A spare: lifecycle events from the leader as well.
        let planned = plan("m3", &flat, false, Some(&flat[0]));
        assert_eq!(sources(&planned), [vec!["m1"], vec!["m2"], vec!["m1"]]);
        assert!(planned[2].want.derived && !planned[2].want.own);
        let planned = plan("m4", &hubs, false, Some(&hubs[1]));
        assert!(planned[0].want.derived);
    }
}
