//! The scriptlet built-ins, LXD's and Incus's, each a thin binding over the request, the
//! candidates and the [`ScriptletHost`]; plus the bounded `range` and repetition.

use std::cell::RefCell;
use std::rc::Rc;

use starlark::collections::SmallMap;
use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list::AllocList;
use starlark::values::none::{NoneOr, NoneType};
use starlark::values::tuple::UnpackTuple;
use starlark::values::{ProvidesStaticType, Value};

use super::super::{MemberView, PlacementRequest};
use super::bounds::{sum_size, text_size, Guard};
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
    let words: Vec<String> = values
        .items
        .iter()
        .map(|value| shown(*value, MESSAGE_BYTES_MAX))
        .collect();
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

/// The most of each value a log line or a `fail()` message shows.
const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// `value` as text for a message (`str()`), cut to about `limit` bytes; a value whose text
/// is longer is not turned into text at all.
fn shown(value: Value, limit: usize) -> String {
    if let Some(text) = value.unpack_str() {
        if text.len() <= limit {
            return text.to_string();
        }
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        return format!("{}... ({} bytes)", &text[..end], text.len());
    }
    match text_size(value, limit) {
        Some(_) => value.to_str(),
        None => format!("<{} longer than {limit} bytes as text>", value.get_type()),
    }
}

/// The run's bounds.
fn guard<'a>(eval: &Evaluator<'_, 'a, '_>) -> Result<&'a Guard, starlark::Error> {
    Ok(&context(eval)?.guard)
}

/// Fails unless a result of `bytes` (`None`: past what is left) fits in the memory bound.
fn fits(eval: &Evaluator, bytes: Option<usize>) -> starlark::Result<()> {
    guard(eval)?.output_fits(bytes, eval.heap())
}

/// What is left of the memory bound.
fn left(eval: &Evaluator) -> starlark::Result<usize> {
    Ok(guard(eval)?.bytes_left(eval.heap()))
}

/// The size of `separator.join(items)` for a list or tuple of strings (`None` past `limit`);
/// 0 for anything else, which `join` refuses or builds no larger than its input.
fn joined_size(separator: usize, items: Value, limit: usize) -> Option<usize> {
    let items = match starlark::values::list::ListRef::from_value(items) {
        Some(list) => list.content(),
        None => match starlark::values::tuple::TupleRef::from_value(items) {
            Some(tuple) => tuple.content(),
            None => return Some(0),
        },
    };
    let mut total = separator.saturating_mul(items.len().saturating_sub(1));
    for item in items {
        total = total.saturating_add(item.unpack_str().map_or(0, str::len));
        if total > limit {
            return None;
        }
    }
    Some(total)
}

/// Calls `this.name(*args, **kwargs)` as the source wrote it.
fn call_method<'v>(
    this: Value<'v>,
    name: &str,
    args: &[Value<'v>],
    kwargs: &SmallMap<String, Value<'v>>,
    eval: &mut Evaluator<'v, '_, '_>,
) -> starlark::Result<Value<'v>> {
    let method = this.get_attr_error(name, eval.heap())?;
    let named: Vec<(&str, Value<'v>)> = kwargs
        .iter()
        .map(|(key, value)| (key.as_str(), *value))
        .collect();
    eval.eval_function(method, args, &named)
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
            guard(eval)?.repetition_fits(sequence, count, heap)?;
        }
        a.mul(b, heap)
    }

    /// `X.join(...)`, rewritten so: refused before it is built when the result would not fit
    /// in the memory bound.
    fn _starling_join<'v>(
        #[starlark(require = pos)] this: Value<'v>,
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        if let (Some(separator), [items]) = (this.unpack_str(), args.items.as_slice()) {
            let size = joined_size(separator.len(), *items, left(eval)?);
            fits(eval, size)?;
        }
        call_method(this, "join", &args.items, &kwargs, eval)
    }

    /// `X.replace(...)`, rewritten so (`s.replace("", s)` is quadratic).
    fn _starling_replace<'v>(
        #[starlark(require = pos)] this: Value<'v>,
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        if let (Some(text), [old, new, rest @ ..]) = (this.unpack_str(), args.items.as_slice()) {
            if let (Some(old), Some(new)) = (old.unpack_str(), new.unpack_str()) {
                let found = if old.is_empty() {
                    text.chars().count() + 1
                } else {
                    text.matches(old).count()
                };
                let count = rest
                    .first()
                    .and_then(|count| count.unpack_i32())
                    .filter(|count| *count >= 0)
                    .map_or(found, |count| found.min(count as usize));
                let size = count
                    .checked_mul(new.len())
                    .and_then(|added| added.checked_add(text.len()));
                fits(eval, size)?;
            }
        }
        call_method(this, "replace", &args.items, &kwargs, eval)
    }

    /// `X.format(...)`, rewritten so: each `{}` may repeat the longest argument.
    fn _starling_format<'v>(
        #[starlark(require = pos)] this: Value<'v>,
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
        #[starlark(kwargs)] kwargs: SmallMap<String, Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        if let Some(template) = this.unpack_str() {
            let fields = template.matches('{').count();
            if fields > 0 {
                let limit = left(eval)?;
                let longest = args
                    .items
                    .iter()
                    .chain(kwargs.values())
                    .try_fold(0, |longest, value| {
                        text_size(*value, limit).map(|size| longest.max(size))
                    });
                let size = longest
                    .and_then(|longest| longest.checked_mul(fields))
                    .and_then(|size| size.checked_add(template.len()));
                fits(eval, size)?;
            }
        }
        call_method(this, "format", &args.items, &kwargs, eval)
    }

    /// A slice, wrapped so (see `rewrite::CHECKED`): the memory is checked once it is built,
    /// before anything else in the statement runs.
    fn _starling_checked<'v>(
        #[starlark(require = pos)] value: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        guard(eval)?.check_heap(eval.heap())?;
        Ok(value)
    }

    /// `a + b`, rewritten so: two strings, lists or tuples are joined only when the result
    /// fits in what is left of the memory bound (`s + s + s + ...` in one statement would
    /// otherwise build every partial sum before the next statement's check).
    fn _starling_add<'v>(
        #[starlark(require = pos)] a: Value<'v>,
        #[starlark(require = pos)] b: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        if let Some(size) = sum_size(a, b) {
            fits(eval, Some(size))?;
        }
        a.add(b, eval.heap())
    }

    /// `a % b`, rewritten so: each `%` of a format string may repeat `b`'s text.
    fn _starling_percent<'v>(
        #[starlark(require = pos)] a: Value<'v>,
        #[starlark(require = pos)] b: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        if let Some(template) = a.unpack_str() {
            let fields = template.matches('%').count();
            if fields > 0 {
                let size = text_size(b, left(eval)?)
                    .and_then(|size| size.checked_mul(fields))
                    .and_then(|size| size.checked_add(template.len()));
                fits(eval, size)?;
            }
        }
        a.percent(b, eval.heap())
    }

    /// `str(x)`, rewritten so: `x`'s text is measured before it is built.
    fn _starling_str<'v>(
        #[starlark(require = pos)] x: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        if x.unpack_str().is_some() {
            return Ok(x);
        }
        fits(eval, text_size(x, left(eval)?))?;
        Ok(eval.heap().alloc(x.to_str()))
    }

    /// `repr(x)`, rewritten so.
    fn _starling_repr<'v>(
        #[starlark(require = pos)] x: Value<'v>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Value<'v>> {
        fits(eval, text_size(x, left(eval)?))?;
        Ok(eval.heap().alloc(x.to_repr()))
    }

    /// `fail(...)`, rewritten so: each value shows at most 64 KiB of text.
    fn _starling_fail<'v>(
        #[starlark(args)] args: UnpackTuple<Value<'v>>,
    ) -> starlark::Result<NoneType> {
        let mut message = String::new();
        for value in args.items {
            message.push(' ');
            match value.unpack_str() {
                Some(_) => message.push_str(&shown(value, MESSAGE_BYTES_MAX)),
                None if text_size(value, MESSAGE_BYTES_MAX).is_some() => {
                    message.push_str(&value.to_repr())
                }
                None => message.push_str(&shown(value, MESSAGE_BYTES_MAX)),
            }
        }
        Err(starlark::Error::new_kind(starlark::ErrorKind::Fail(
            anyhow::Error::msg(message),
        )))
    }
}
