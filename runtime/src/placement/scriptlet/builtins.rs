//! The scriptlet built-ins, LXD's and Incus's, each a thin binding over the request, the
//! candidates and the [`ScriptletHost`]; plus the bounded `range` and repetition.

use std::cell::RefCell;
use std::rc::Rc;

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list::AllocList;
use starlark::values::none::{NoneOr, NoneType};
use starlark::values::tuple::UnpackTuple;
use starlark::values::{ProvidesStaticType, Value};

use super::super::{MemberView, PlacementRequest};
use super::bounds::Guard;
use super::values::{json_value, members_value, resources_value, GuardedRange, JsonObject};
use super::{instance_resources, LogLevel, LogLine, ScriptletError, ScriptletHost};

/// What the built-ins of one evaluation reach, through `Evaluator::extra`.
#[derive(ProvidesStaticType)]
pub(crate) struct Context<'a> {
    /// The run's bounds.
    pub(crate) guard: Rc<Guard>,
    /// The call of `instance_placement`; `None` while the module itself is evaluated.
    pub(crate) call: Option<&'a Call<'a>>,
}

/// One call of `instance_placement`.
pub(crate) struct Call<'a> {
    pub(crate) request: &'a PlacementRequest,
    pub(crate) candidates: &'a [&'a MemberView],
    pub(crate) host: &'a dyn ScriptletHost,
    pub(crate) log: RefCell<Vec<LogLine>>,
    pub(crate) target: RefCell<Option<String>>,
    /// A typed failure raised by a built-in, reported instead of Starlark's error text.
    pub(crate) failure: RefCell<Option<ScriptletError>>,
}

impl Call<'_> {
    fn fail(&self, error: ScriptletError) -> starlark::Error {
        let message = error.clone();
        *self.failure.borrow_mut() = Some(error);
        starlark::Error::new_other(message)
    }

    fn is_candidate(&self, name: &str) -> bool {
        self.candidates.iter().any(|member| member.name == name)
    }
}

/// The evaluation's context.
fn context<'a, 'e>(eval: &Evaluator<'_, 'a, 'e>) -> Result<&'a Context<'e>, starlark::Error> {
    eval.extra
        .and_then(|extra| extra.downcast_ref::<Context<'e>>())
        .ok_or_else(|| starlark::Error::new_other(ScriptletError::NotInCall))
}

/// The call's context: the placement built-ins work only inside `instance_placement`.
fn call<'a, 'e>(
    eval: &Evaluator<'_, 'a, 'e>,
    builtin: &'static str,
) -> Result<&'a Call<'e>, starlark::Error> {
    context(eval)?
        .call
        .ok_or_else(|| starlark::Error::new_other(ScriptletError::OutsideCall { builtin }))
}

fn log(
    eval: &Evaluator,
    level: LogLevel,
    values: UnpackTuple<Value>,
    builtin: &'static str,
) -> starlark::Result<NoneType> {
    let call = call(eval, builtin)?;
    let words: Vec<String> = values.items.iter().map(|value| value.to_str()).collect();
    call.log.borrow_mut().push(LogLine {
        level,
        text: words.join(" "),
    });
    Ok(NoneType)
}

fn set_target_of(eval: &Evaluator, member_name: &str) -> starlark::Result<NoneType> {
    let call = call(eval, "set_target")?;
    if !call.is_candidate(member_name) {
        return Err(call.fail(ScriptletError::InvalidTarget {
            name: member_name.to_string(),
        }));
    }
    *call.target.borrow_mut() = Some(member_name.to_string());
    Ok(NoneType)
}

/// "Invalid member name" for a name that is not a candidate, as Incus answers.
const INVALID_MEMBER_NAME: &str = "Invalid member name";

fn member_answer<'v>(
    eval: &Evaluator<'v, '_, '_>,
    member_name: &str,
    builtin: &'static str,
    ask: impl FnOnce(&dyn ScriptletHost) -> Result<serde_json::Value, String>,
) -> starlark::Result<Value<'v>> {
    let call = call(eval, builtin)?;
    let heap = eval.heap();
    if !call.is_candidate(member_name) {
        return Ok(heap.alloc(INVALID_MEMBER_NAME));
    }
    match ask(call.host) {
        Ok(answer) => Ok(json_value(heap, &answer)),
        Err(message) => Err(call.fail(ScriptletError::Host { builtin, message })),
    }
}

fn option(value: NoneOr<&str>) -> Option<&str> {
    match value {
        NoneOr::None => None,
        NoneOr::Other(text) => Some(text),
    }
}

#[starlark_module]
pub(crate) fn register(builder: &mut GlobalsBuilder) {
    /// Logs the values, turned into text and joined with spaces, at level info.
    fn log_info<'v>(
        #[starlark(args)] values: UnpackTuple<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        log(eval, LogLevel::Info, values, "log_info")
    }

    /// Logs the values at level warn.
    fn log_warn<'v>(
        #[starlark(args)] values: UnpackTuple<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        log(eval, LogLevel::Warn, values, "log_warn")
    }

    /// Logs the values at level error.
    fn log_error<'v>(
        #[starlark(args)] values: UnpackTuple<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        log(eval, LogLevel::Error, values, "log_error")
    }

    /// Places the instance on this candidate.
    fn set_target(
        member_name: &str,
        eval: &mut Evaluator<'_, '_, '_>,
    ) -> starlark::Result<NoneType> {
        set_target_of(eval, member_name)
    }

    /// The same as `set_target` (the name LXD's documentation uses).
    fn set_cluster_member_target(
        member_name: &str,
        eval: &mut Evaluator<'_, '_, '_>,
    ) -> starlark::Result<NoneType> {
        set_target_of(eval, member_name)
    }

    /// The candidate's state (`sysinfo`, `storage_pools`), or "Invalid member name".
    fn get_cluster_member_state<'v>(
        member_name: &str,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        member_answer(eval, member_name, "get_cluster_member_state", |host| {
            host.member_state(member_name)
        })
    }

    /// The candidate's resources (`cpu`, `memory`, `storage`, ...), or "Invalid member name".
    fn get_cluster_member_resources<'v>(
        member_name: &str,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        member_answer(eval, member_name, "get_cluster_member_resources", |host| {
            host.member_resources(member_name)
        })
    }

    /// What the instance asks for: `cpu_cores`, `memory_size`, `root_disk_size`.
    fn get_instance_resources<'v>(eval: &mut Evaluator<'v, '_, '_>) -> starlark::Result<Value<'v>> {
        let call = call(eval, "get_instance_resources")?;
        Ok(resources_value(
            eval.heap(),
            &instance_resources(call.request),
        ))
    }

    /// Instances, of a project and/or on a member.
    fn get_instances<'v>(
        #[starlark(default = NoneOr::None)] project: NoneOr<&str>,
        #[starlark(default = NoneOr::None)] location: NoneOr<&str>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let call = call(eval, "get_instances")?;
        let heap = eval.heap();
        let instances = call.host.instances(option(project), option(location));
        Ok(heap.alloc(AllocList(
            instances.iter().map(|instance| json_value(heap, instance)),
        )))
    }

    /// How many instances, of a project and/or on a member; `pending` counts creations in
    /// flight too.
    fn get_instances_count<'v>(
        #[starlark(default = NoneOr::None)] project: NoneOr<&str>,
        #[starlark(default = NoneOr::None)] location: NoneOr<&str>,
        #[starlark(default = false)] pending: bool,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let call = call(eval, "get_instances_count")?;
        let count = call
            .host
            .instances_count(option(project), option(location), pending);
        Ok(eval.heap().alloc(count))
    }

    /// The online members, of a group or all.
    fn get_cluster_members<'v>(
        #[starlark(default = NoneOr::None)] group: NoneOr<&str>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let call = call(eval, "get_cluster_members")?;
        let members = call.host.cluster_members(option(group));
        let members: Vec<&MemberView> = members.iter().collect();
        Ok(members_value(eval.heap(), &members))
    }

    /// A project (`name`, `description`, `config`), or None.
    fn get_project<'v>(
        name: &str,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let call = call(eval, "get_project")?;
        Ok(match call.host.project(name) {
            Some(serde_json::Value::Object(map)) => eval.heap().alloc(JsonObject(map)),
            Some(other) => json_value(eval.heap(), &other),
            None => Value::new_none(),
        })
    }

    /// `range([start,] stop[, step])`, producing elements only within the bounds.
    fn range(
        #[starlark(require = pos)] a1: i32,
        #[starlark(require = pos)] a2: Option<i32>,
        #[starlark(require = pos, default = 1)] step: i32,
    ) -> starlark::Result<GuardedRange> {
        let (start, stop) = match a2 {
            None => (0, a1),
            Some(stop) => (a1, stop),
        };
        GuardedRange::new(start, stop, step).map_err(starlark::Error::new_value)
    }

    /// `a * b`, rewritten so: a repetition (`"x" * n`, `[0] * n`) is refused before it is
    /// built when it would not fit in the memory bound.
    fn _starling_multiply<'v>(
        #[starlark(require = pos)] a: Value<'v>,
        #[starlark(require = pos)] b: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        let heap = eval.heap();
        let repetition = match (a.unpack_i32(), b.unpack_i32()) {
            (None, Some(count)) => Some((a, count)),
            (Some(count), None) => Some((b, count)),
            _ => None,
        };
        if let Some((sequence, count)) = repetition {
            context(eval)?
                .guard
                .repetition_fits(sequence, count, heap.allocated_bytes())?;
        }
        a.mul(b, heap)
    }
}
