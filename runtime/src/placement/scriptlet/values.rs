//! What a scriptlet sees: the request and the members as Starlark structs (LXD's field names),
//! the host's JSON answers as [`JsonObject`]s, and the bounded [`GuardedRange`].

use std::fmt;

use allocative::Allocative;
use serde::Serialize;
use starlark::environment::{Methods, MethodsBuilder};
use starlark::starlark_module;
use starlark::starlark_simple_value;
use starlark::values::dict::AllocDict;
use starlark::values::list::AllocList;
use starlark::values::none::NoneType;
use starlark::values::starlark_value;
use starlark::values::structs::AllocStruct;
use starlark::values::{
    Heap, NoSerialize, OwnedFrozenValue, ProvidesStaticType, StarlarkPagablePanic, StarlarkValue,
    Value, ValueLike,
};

use super::super::{MemberView, PlacementRequest};
use super::bounds::range_step;
use super::InstanceResources;

/// A JSON value as Starlark: objects become [`JsonObject`]s, arrays lists.
pub(crate) fn json_value<'v>(heap: Heap<'v>, json: &serde_json::Value) -> Value<'v> {
    match json {
        serde_json::Value::Null => Value::new_none(),
        serde_json::Value::Bool(value) => Value::new_bool(*value),
        serde_json::Value::Number(number) => {
            if let Some(value) = number.as_i64() {
                heap.alloc(value)
            } else if let Some(value) = number.as_u64() {
                heap.alloc(value)
            } else {
                heap.alloc(number.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(text) => heap.alloc(text.as_str()),
        serde_json::Value::Array(items) => {
            heap.alloc(AllocList(items.iter().map(|item| json_value(heap, item))))
        }
        serde_json::Value::Object(map) => heap.alloc(JsonObject(map.clone())),
    }
}

/// A struct field's name: a string made once, not allocated on each call's heap.
macro_rules! field {
    ($name:literal) => {
        starlark::const_frozen_string!($name)
    };
}

fn text<'v>(heap: Heap<'v>, value: &str) -> Value<'v> {
    heap.alloc(value)
}

fn texts<'v>(heap: Heap<'v>, values: &[String]) -> Value<'v> {
    heap.alloc(AllocList(values.iter().map(|value| value.as_str())))
}

fn text_map<'v>(heap: Heap<'v>, map: &std::collections::BTreeMap<String, String>) -> Value<'v> {
    heap.alloc(AllocDict(
        map.iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
    ))
}

/// A member as LXD's scriptlets see it: `server_name`, `url`, `database`, `status`, `message`,
/// `architecture`, `roles`, `failure_domain`, `description`, `config`, `groups`.
pub(crate) fn member_value<'v>(heap: Heap<'v>, member: &MemberView) -> Value<'v> {
    heap.alloc(AllocStruct([
        (field!("server_name"), text(heap, &member.name)),
        (field!("url"), text(heap, &member.url)),
        (field!("database"), Value::new_bool(member.database)),
        (field!("status"), text(heap, &member.status)),
        (field!("message"), text(heap, &member.message)),
        (field!("architecture"), text(heap, &member.architecture)),
        (field!("roles"), texts(heap, &member.roles)),
        (field!("failure_domain"), text(heap, &member.failure_domain)),
        (field!("description"), text(heap, &member.description)),
        (field!("config"), text_map(heap, &member.config)),
        (field!("groups"), texts(heap, &member.groups)),
    ]))
}

/// A list of members.
pub(crate) fn members_value<'v>(heap: Heap<'v>, members: &[&MemberView]) -> Value<'v> {
    heap.alloc(AllocList(
        members.iter().map(|member| member_value(heap, member)),
    ))
}

/// Candidate lists kept (a move leaves out the instance's own member, so the lists differ by
/// source member).
const FROZEN_LISTS_MAX: usize = 8;

/// The candidates' list, frozen once and kept between calls while it holds the same members
/// showing the same fields (their instance counts are not shown; views made from the cluster
/// state at the same `members_revision` show the same record fields, and are compared on
/// the rest: database roles and status message): a call then allocates
/// nothing for it, instead of a struct, its field names, strings, lists and a dict per member.
/// Frozen, it cannot be changed by the scriptlet (`candidate_members.append(x)` and
/// `member.groups.append(x)` fail), which LXD's scriptlets have no reason to do.
#[derive(Default)]
pub(crate) struct FrozenMembers {
    lists: std::sync::Mutex<Vec<CachedList>>,
}

/// The revision all of `members` were made at, if they were made at one.
fn common_revision(members: &[&MemberView]) -> Option<u64> {
    let first = members.first()?.revision?;
    members
        .iter()
        .all(|member| member.revision == Some(first))
        .then_some(first)
}

impl Clone for FrozenMembers {
    /// A copy starts with an empty cache.
    fn clone(&self) -> Self {
        FrozenMembers::default()
    }
}

impl fmt::Debug for FrozenMembers {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("FrozenMembers")
    }
}

impl FrozenMembers {
    /// A list of `members`, as [`members_value`] makes it.
    pub(crate) fn list<'v>(&self, heap: Heap<'v>, members: &[&MemberView]) -> Value<'v> {
        let mut lists = self
            .lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Views made at one revision of the member records show the same fields when their
        // names match; others are compared field by field.
        let revision = common_revision(members);
        let same = |cached: &&CachedList| {
            cached.members.len() == members.len()
                && match revision {
                    Some(revision) => {
                        cached.revision == Some(revision)
                            && cached
                                .members
                                .iter()
                                .zip(members)
                                .all(|(seen, member)| shows_the_same_live(seen, member))
                    }
                    None => cached
                        .members
                        .iter()
                        .zip(members)
                        .all(|(seen, member)| shows_the_same(seen, member)),
                }
        };
        if let Some(cached) = lists.iter().find(same) {
            return heap.access_owned_frozen_value(&cached.frozen);
        }
        let Some(frozen) = freeze_members(members) else {
            return members_value(heap, members);
        };
        if lists.len() >= FROZEN_LISTS_MAX {
            lists.remove(0);
        }
        lists.push(CachedList {
            revision,
            members: members.iter().map(|member| (*member).clone()).collect(),
            frozen: frozen.clone(),
        });
        heap.access_owned_frozen_value(&frozen)
    }
}

/// A frozen list of candidates and what it was made from.
struct CachedList {
    /// The revision of the member records its views were made at, if one.
    revision: Option<u64>,
    members: Vec<MemberView>,
    frozen: OwnedFrozenValue,
}

/// Whether two views made at the same revision of the member records show the same fields:
/// the same member, and the same fields that come from elsewhere (the database roles Raft
/// gives, the status message).
fn shows_the_same_live(a: &MemberView, b: &MemberView) -> bool {
    a.name == b.name && a.database == b.database && a.roles == b.roles && a.message == b.message
}

/// Whether `member_value` of the two is the same.
fn shows_the_same(a: &MemberView, b: &MemberView) -> bool {
    a.name == b.name
        && a.url == b.url
        && a.database == b.database
        && a.status == b.status
        && a.message == b.message
        && a.architecture == b.architecture
        && a.roles == b.roles
        && a.failure_domain == b.failure_domain
        && a.description == b.description
        && a.config == b.config
        && a.groups == b.groups
}

/// `members_value` on a heap of its own, frozen.
fn freeze_members(members: &[&MemberView]) -> Option<OwnedFrozenValue> {
    starlark::environment::Module::with_temp_heap(|module| {
        module.set("members", members_value(module.heap(), members));
        module.freeze()
    })
    .ok()?
    .get("members")
    .ok()
}

/// The request, flattened as LXD passes it: `name`, `project`, `type`, `architecture`,
/// `source`, `config`, `devices`, `profiles`, `ephemeral`, `description`, `reason`.
pub(crate) fn request_value<'v>(heap: Heap<'v>, request: &PlacementRequest) -> Value<'v> {
    let devices = heap.alloc(AllocDict(
        request
            .devices
            .iter()
            .map(|(name, keys)| (name.as_str(), text_map(heap, keys))),
    ));
    heap.alloc(AllocStruct([
        (field!("name"), text(heap, &request.name)),
        (field!("project"), text(heap, &request.project)),
        (field!("type"), text(heap, &request.kind)),
        (field!("architecture"), text(heap, &request.architecture)),
        (field!("source"), text(heap, &request.source)),
        (field!("config"), text_map(heap, &request.config)),
        (field!("devices"), devices),
        (field!("profiles"), texts(heap, &request.profiles)),
        (field!("ephemeral"), Value::new_bool(request.ephemeral)),
        (field!("description"), text(heap, &request.description)),
        (field!("reason"), heap.alloc(request.reason.to_string())),
    ]))
}

/// `get_instance_resources()`: `cpu_cores`, `memory_size`, `root_disk_size`.
pub(crate) fn resources_value<'v>(heap: Heap<'v>, resources: &InstanceResources) -> Value<'v> {
    heap.alloc(AllocStruct([
        (field!("cpu_cores"), heap.alloc(resources.cpu_cores)),
        (field!("memory_size"), heap.alloc(resources.memory_size)),
        (
            field!("root_disk_size"),
            heap.alloc(resources.root_disk_size),
        ),
    ]))
}

/// A JSON object from the host (member state and resources, instances, projects). LXD hands
/// these to scriptlets as structs, and maps inside them as dicts; JSON does not keep the
/// difference, so an object answers both: `res.memory.total` and `res["memory"]["total"]`,
/// plus `in`, `len`, iteration over keys and the dict methods `get`, `keys`, `values`,
/// `items` (a key with one of those names is read with `[...]`).
#[derive(
    Clone, Debug, PartialEq, ProvidesStaticType, Allocative, StarlarkPagablePanic, Serialize,
)]
#[serde(transparent)]
pub(crate) struct JsonObject(
    #[allocative(skip)] pub(crate) serde_json::Map<String, serde_json::Value>,
);

starlark_simple_value!(JsonObject);

impl fmt::Display for JsonObject {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.0) {
            Ok(text) => formatter.write_str(&text),
            Err(_) => formatter.write_str("{...}"),
        }
    }
}

/// A missing key, read with `object["key"]`.
#[derive(Debug, thiserror::Error)]
#[error("Key {0:?} not found")]
struct KeyNotFound(String);

#[starlark_value(type = "object")]
impl<'v> StarlarkValue<'v> for JsonObject {
    fn get_methods() -> Option<&'static Methods> {
        Some(OBJECT_METHODS.methods())
    }

    fn get_attr(&self, attribute: &str, heap: Heap<'v>) -> Option<Value<'v>> {
        self.0.get(attribute).map(|value| json_value(heap, value))
    }

    fn has_attr(&self, attribute: &str, _heap: Heap<'v>) -> bool {
        self.0.contains_key(attribute)
    }

    fn dir_attr(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    fn at(&self, index: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let key = index.to_str();
        match self.0.get(&key) {
            Some(value) => Ok(json_value(heap, value)),
            None => Err(starlark::Error::new_value(KeyNotFound(key))),
        }
    }

    fn is_in(&self, other: Value<'v>) -> starlark::Result<bool> {
        Ok(other
            .unpack_str()
            .is_some_and(|key| self.0.contains_key(key)))
    }

    fn length(&self) -> starlark::Result<i32> {
        Ok(self.0.len().min(i32::MAX as usize) as i32)
    }

    fn iterate_collect(&self, heap: Heap<'v>) -> starlark::Result<Vec<Value<'v>>> {
        Ok(self.0.keys().map(|key| heap.alloc(key.as_str())).collect())
    }

    fn to_bool(&self) -> bool {
        !self.0.is_empty()
    }

    fn equals(&self, other: Value<'v>) -> starlark::Result<bool> {
        Ok(other
            .downcast_ref::<JsonObject>()
            .is_some_and(|other| other.0 == self.0))
    }
}

#[starlark_module]
fn object_methods(builder: &mut MethodsBuilder) {
    /// The value of `key`, or `default` (None) when it is missing.
    fn get<'v>(
        this: &JsonObject,
        #[starlark(require = pos)] key: &str,
        #[starlark(require = pos, default = NoneType)] default: Value<'v>,
        heap: Heap<'v>,
    ) -> starlark::Result<Value<'v>> {
        Ok(match this.0.get(key) {
            Some(value) => json_value(heap, value),
            None => default,
        })
    }

    /// The keys, in order.
    fn keys<'v>(this: &JsonObject, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        Ok(heap.alloc(AllocList(this.0.keys().map(|key| key.as_str()))))
    }

    /// The values, in key order.
    fn values<'v>(this: &JsonObject, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        Ok(heap.alloc(AllocList(
            this.0.values().map(|value| json_value(heap, value)),
        )))
    }

    /// `(key, value)` pairs, in key order.
    fn items<'v>(this: &JsonObject, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        Ok(heap.alloc(AllocList(this.0.iter().map(|(key, value)| {
            heap.alloc((heap.alloc(key.as_str()), json_value(heap, value)))
        }))))
    }
}

starlark::methods_static!(OBJECT_METHODS = object_methods);

/// `range()` for scriptlets: the standard range (length, index, `in`, iteration), except that
/// it produces elements only while the bounds allow ([`range_step`]), so a built-in cannot
/// materialise `range(10**9)` in one call. Slicing a range is not supported.
#[derive(Clone, Copy, Debug, ProvidesStaticType, NoSerialize, Allocative, StarlarkPagablePanic)]
pub(crate) struct GuardedRange {
    start: i64,
    stop: i64,
    step: i64,
}

starlark_simple_value!(GuardedRange);

/// `range()` with a step of 0.
#[derive(Debug, thiserror::Error)]
#[error("Third argument of range (step) cannot be zero")]
pub(crate) struct ZeroStep;

/// A range index out of bounds.
#[derive(Debug, thiserror::Error)]
#[error("Index {index} is out of bound for a range of length {length}")]
struct IndexOutOfRange {
    index: i64,
    length: i64,
}

impl GuardedRange {
    pub(crate) fn new(start: i32, stop: i32, step: i32) -> Result<Self, ZeroStep> {
        if step == 0 {
            return Err(ZeroStep);
        }
        Ok(GuardedRange {
            start: start.into(),
            stop: stop.into(),
            step: step.into(),
        })
    }

    fn count(&self) -> i64 {
        let span = if self.step > 0 {
            self.stop - self.start
        } else {
            self.start - self.stop
        };
        if span <= 0 {
            0
        } else {
            (span - 1) / self.step.abs() + 1
        }
    }

    fn item(&self, index: i64) -> i64 {
        self.start + index * self.step
    }
}

impl fmt::Display for GuardedRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step != 1 {
            write!(
                formatter,
                "range({}, {}, {})",
                self.start, self.stop, self.step
            )
        } else if self.start != 0 {
            write!(formatter, "range({}, {})", self.start, self.stop)
        } else {
            write!(formatter, "range({})", self.stop)
        }
    }
}

#[starlark_value(type = "range")]
impl<'v> StarlarkValue<'v> for GuardedRange {
    fn to_bool(&self) -> bool {
        self.count() > 0
    }

    fn length(&self) -> starlark::Result<i32> {
        i32::try_from(self.count()).map_err(|_| {
            starlark::Error::new_value(IndexOutOfRange {
                index: i64::from(i32::MAX),
                length: self.count(),
            })
        })
    }

    fn at(&self, index: Value<'v>, heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        let length = self.count();
        let given = index
            .unpack_i32()
            .map(i64::from)
            .ok_or_else(|| starlark::Error::new_value(IndexOutOfRange { index: -1, length }))?;
        let position = if given < 0 { given + length } else { given };
        if position < 0 || position >= length {
            return Err(starlark::Error::new_value(IndexOutOfRange {
                index: given,
                length,
            }));
        }
        Ok(heap.alloc(self.item(position)))
    }

    fn is_in(&self, other: Value<'v>) -> starlark::Result<bool> {
        let Some(value) = other.unpack_i32().map(i64::from) else {
            return Ok(false);
        };
        let offset = value - self.start;
        let position = offset / self.step;
        Ok(offset % self.step == 0 && position >= 0 && position < self.count())
    }

    fn equals(&self, other: Value<'v>) -> starlark::Result<bool> {
        let Some(other) = other.downcast_ref::<GuardedRange>() else {
            return Ok(false);
        };
        let (length, other_length) = (self.count(), other.count());
        Ok(length == other_length
            && (length == 0
                || (self.start == other.start && (length == 1 || self.step == other.step))))
    }

    unsafe fn iterate(&self, me: Value<'v>, _heap: Heap<'v>) -> starlark::Result<Value<'v>> {
        Ok(me)
    }

    unsafe fn iter_size_hint(&self, index: usize) -> (usize, Option<usize>) {
        let left = (self.count() - index as i64).max(0) as usize;
        (0, Some(left))
    }

    unsafe fn iter_next(&self, index: usize, heap: Heap<'v>) -> Option<Value<'v>> {
        let index = index as i64;
        if index >= self.count() || !range_step() {
            return None;
        }
        Some(heap.alloc(self.item(index)))
    }

    unsafe fn iter_stop(&self) {}
}
