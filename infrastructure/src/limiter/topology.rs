//! Where each user's keys live: the hash slot of a user (every key of theirs
//! carries the hash tag `{<user_id>}`, so one slot holds them all) and the
//! map from slots to the master node serving them, read from
//! `CLUSTER SLOTS`.
//!
//! A single Redis is the degenerate map: every slot on the one node.

use std::fmt;

use pantheon_domain::UserId;
use redis::Value;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// A node by the address it is reached at (`host:port`, as the cluster
/// announces it; for a single Redis, whatever its URL named).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// Host or IP.
    pub host: String,
    /// TCP port (0 for a Unix socket).
    pub port: u16,
}

impl NodeAddr {
    /// A node at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self { host: host.into(), port }
    }

    /// Parses the `host:port` of a `MOVED`/`ASK` reply (the port after the
    /// last colon, so an IPv6 host keeps its own).
    pub fn parse(address: &str) -> Option<Self> {
        let (host, port) = address.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(Self::new(host, port.parse().ok()?))
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The slot of `user`'s keys: CRC16 (XMODEM) of the hash tag, mod 16,384,
/// as Redis computes it (`CLUSTER KEYSLOT`). User ids have no braces, so
/// the tag is the whole id.
pub fn slot_of(user: &UserId) -> u16 {
    let crc = crc16::State::<crc16::XMODEM>::calculate(user.as_str().as_bytes());
    crc % SLOTS as u16
}

/// Which node serves each slot.
#[derive(Debug, Clone)]
pub struct SlotMap {
    nodes: Vec<NodeAddr>,
    /// Index into `nodes`, per slot.
    owner: Vec<u16>,
    /// The nodes serving a slot, kept as the map changes (the actor asks
    /// on every loop turn how many there are).
    serving: Vec<NodeAddr>,
}

impl SlotMap {
    /// Every slot on `node`: a single Redis, or a cluster whose layout is
    /// not known yet (its seed stands in until `CLUSTER SLOTS` answers).
    pub fn single(node: NodeAddr) -> Self {
        Self { nodes: vec![node.clone()], owner: vec![0; SLOTS], serving: vec![node] }
    }

    /// The node serving `slot`.
    pub fn node(&self, slot: u16) -> &NodeAddr {
        let index = self.owner.get(usize::from(slot)).copied().unwrap_or(0);
        &self.nodes[usize::from(index)]
    }

    /// Every node that serves at least one slot.
    pub fn masters(&self) -> impl Iterator<Item = &NodeAddr> {
        self.serving.iter()
    }

    /// How many nodes serve a slot.
    pub fn master_count(&self) -> usize {
        self.serving.len()
    }

    /// Whether `node` serves any slot.
    pub fn serves(&self, node: &NodeAddr) -> bool {
        self.serving.contains(node)
    }

    /// Points `slot` at `node` (what a `MOVED` reply says).
    pub fn assign(&mut self, slot: u16, node: NodeAddr) {
        let index = self.index_of(node);
        if let Some(owner) = self.owner.get_mut(usize::from(slot))
            && *owner != index
        {
            *owner = index;
            self.compact();
        }
    }

    /// Applies `CLUSTER SLOTS` ranges; slots they do not cover keep their
    /// previous owner (a node that is down still owns its slots until a
    /// replica takes them over).
    pub fn apply(&mut self, ranges: &[(u16, u16, NodeAddr)]) {
        for (start, end, node) in ranges {
            let index = self.index_of(node.clone());
            for slot in *start..=*end {
                if let Some(owner) = self.owner.get_mut(usize::from(slot)) {
                    *owner = index;
                }
            }
        }
        self.compact();
    }

    fn index_of(&mut self, node: NodeAddr) -> u16 {
        match self.nodes.iter().position(|n| *n == node) {
            Some(index) => index as u16,
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u16
            }
        }
    }

    /// Drops nodes that no longer serve a slot, so the list stays as long
    /// as the cluster's masters however often the layout changes.
    fn compact(&mut self) {
        let mut used = vec![false; self.nodes.len()];
        for &index in &self.owner {
            used[usize::from(index)] = true;
        }
        let serving: Vec<NodeAddr> =
            self.nodes.iter().zip(&used).filter(|(_, u)| **u).map(|(n, _)| n.clone()).collect();
        self.serving = serving.clone();
        if serving.len() == self.nodes.len() {
            return;
        }
        let remap: Vec<u16> = self
            .nodes
            .iter()
            .map(|n| serving.iter().position(|s| s == n).unwrap_or(0) as u16)
            .collect();
        for owner in &mut self.owner {
            *owner = remap[usize::from(*owner)];
        }
        self.nodes = serving;
    }
}

/// Parses a `CLUSTER SLOTS` reply into `(first, last, master)` ranges. An
/// empty host means "the node you asked" (`asked_host`); a `?` host
/// (unknown endpoint) leaves that range out.
///
/// # Errors
/// A message when the reply has another shape.
pub fn parse_cluster_slots(
    value: Value,
    asked_host: &str,
) -> Result<Vec<(u16, u16, NodeAddr)>, String> {
    let Value::Array(entries) = value else {
        return Err(format!("CLUSTER SLOTS returned {value:?}"));
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err("CLUSTER SLOTS entry is not an array".to_owned());
        };
        let mut fields = fields.into_iter();
        let (Some(start), Some(end), Some(master)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err("CLUSTER SLOTS entry is too short".to_owned());
        };
        let int = |v: Value| -> Result<u16, String> {
            redis::from_redis_value::<u16>(v).map_err(|e| e.to_string())
        };
        let (start, end) = (int(start)?, int(end)?);
        let Value::Array(master) = master else {
            return Err("CLUSTER SLOTS master is not an array".to_owned());
        };
        let mut master = master.into_iter();
        let (Some(host), Some(port)) = (master.next(), master.next()) else {
            return Err("CLUSTER SLOTS master is too short".to_owned());
        };
        let host: String = redis::from_redis_value(host).map_err(|e| e.to_string())?;
        let port = int(port)?;
        let host = match host.as_str() {
            "" => asked_host.to_owned(),
            "?" => continue,
            _ => host,
        };
        if usize::from(end) >= SLOTS || start > end {
            return Err(format!("CLUSTER SLOTS range {start}-{end} is out of bounds"));
        }
        ranges.push((start, end, NodeAddr::new(host, port)));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // The Redis Cluster specification's CRC16 check value.
        assert_eq!(crc16::State::<crc16::XMODEM>::calculate(b"123456789"), 0x31C3);
        // And redis-rs's own slot function agrees for every shape of id.
        for id in ["alice", "user-0f3c2a", "a.b@c|d:e-f_g", "x"] {
            let ours = redis::cluster_routing::Slot::new(slot_of(&user(id)));
            let theirs = redis::cluster_routing::Slot::for_key(format!("ratelimit:{{{id}}}:turns"));
            assert_eq!(ours, Some(theirs), "{id}");
        }
    }

    #[test]
    fn the_map_follows_cluster_slots_and_moved_replies() {
        let (a, b, c) = (
            NodeAddr::new("10.0.0.1", 7000),
            NodeAddr::new("10.0.0.2", 7000),
            NodeAddr::new("10.0.0.3", 7000),
        );
        let mut map = SlotMap::single(a.clone());
        map.apply(&[(0, 5460, a.clone()), (5461, 10922, b.clone()), (10923, 16383, c.clone())]);
        assert_eq!((map.node(0), map.node(5461), map.node(16383)), (&a, &b, &c));
        map.assign(0, b.clone());
        assert_eq!(map.node(0), &b);
        // A's slots all go to C (a failover): A is no longer a master.
        map.apply(&[(1, 5460, c.clone())]);
        assert!(!map.serves(&a));
        assert_eq!(map.masters().count(), 2);
        assert_eq!((map.node(0), map.node(1), map.node(6000)), (&b, &c, &b));
    }

    #[test]
    fn cluster_slots_replies_parse_with_empty_and_unknown_hosts() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(99),
                node("", 7001),
                node("10.0.0.9", 7004),
            ]),
            Value::Array(vec![Value::Int(100), Value::Int(199), node("?", 7002)]),
            Value::Array(vec![Value::Int(200), Value::Int(16383), node("10.0.0.3", 7003)]),
        ]);
        let ranges = parse_cluster_slots(reply, "10.0.0.1");
        assert_eq!(
            ranges,
            Ok(vec![
                (0, 99, NodeAddr::new("10.0.0.1", 7001)),
                (200, 16383, NodeAddr::new("10.0.0.3", 7003)),
            ])
        );
        assert_eq!(NodeAddr::parse("10.0.0.2:6380"), Some(NodeAddr::new("10.0.0.2", 6380)));
        assert_eq!(NodeAddr::parse("[::1]:6380"), Some(NodeAddr::new("::1", 6380)));
    }
}
