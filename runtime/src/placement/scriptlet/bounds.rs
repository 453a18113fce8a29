//! The time and memory bounds of a scriptlet, checked while it runs.
//!
//! starlark-rust has no hard limits; it offers two hooks, and the bounds use both:
//! - a check before every statement (`before_stmt`): the clock, the bytes on the run's heap
//!   (nothing is collected during a call, so that is everything the run allocated) and
//!   recursion of a `def`;
//! - the cancellation check it makes every 1000 loop iterations or calls: the same clock and
//!   bytes, for long single statements such as comprehensions.
//!
//! A single built-in call could still allocate far more than the bound between two checks, so
//! the two ways to make much from little are checked before they run: the repetition operator
//! (`x * n` is rewritten to call [`repetition_fits`] first) and a built-in consuming a range
//! (`list(range(10**9))`: a range gives at most [`RANGE_STEPS_MAX`] elements between two
//! checks, then the run stops).

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starlark::codemap::FileSpanRef;
use starlark::eval::{BeforeStmtFunc, BeforeStmtFuncDyn, Evaluator};
use starlark::values::{Heap, Value};

use super::ScriptletError;

/// At most this many range elements may be produced between two checks. A loop checks every
/// 1000 iterations; only a built-in that consumes a long range at once (`list`, `sorted`,
/// `max`, `list.extend`...) reaches it.
pub(crate) const RANGE_STEPS_MAX: u64 = 1_000_000;

/// The bound a run went over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The run took longer than its time bound.
    Time(Duration),
    /// The run allocated more than its memory bound, or was about to.
    Memory(usize),
    /// A built-in consumed more than [`RANGE_STEPS_MAX`] range elements at once.
    Range,
    /// A `def` called itself, directly or not.
    Recursion(String),
}

impl Exceeded {
    pub(crate) fn into_error(self) -> ScriptletError {
        match self {
            Exceeded::Time(limit) => ScriptletError::TimeLimit { limit },
            Exceeded::Memory(limit_bytes) => ScriptletError::MemoryLimit { limit_bytes },
            Exceeded::Range => ScriptletError::RangeLimit {
                limit: RANGE_STEPS_MAX,
            },
            Exceeded::Recursion(function) => ScriptletError::Recursion { function },
        }
    }
}

/// Frames besides `def`s a call chain may hold before the stack is read for recursion.
const RECURSION_SLACK: usize = 2;

/// Statements between two readings of the clock (the heap is checked before every statement:
/// one statement may double a string).
const STATEMENTS_PER_CLOCK: u32 = 16;

/// The bounds of one evaluation (the module at compile time, or one call), and the first one
/// it went over.
pub(crate) struct Guard {
    started: Instant,
    /// This thread's net allocated bytes when the evaluation started
    /// ([`crate::counting_alloc`]).
    allocated_at_start: i64,
    time: Duration,
    memory_bytes: usize,
    /// Names of the scriptlet's `def`s: one of them twice on the call stack is recursion.
    functions: Arc<BTreeSet<String>>,
    exceeded: RefCell<Option<Exceeded>>,
    /// Whether `exceeded` is set (read before every statement without borrowing it).
    tripped: Cell<bool>,
    depth: Cell<usize>,
}

impl Guard {
    pub(crate) fn new(
        time: Duration,
        memory_bytes: usize,
        functions: Arc<BTreeSet<String>>,
    ) -> Self {
        Guard {
            started: Instant::now(),
            allocated_at_start: crate::counting_alloc::thread_net_bytes(),
            time,
            memory_bytes,
            functions,
            exceeded: RefCell::new(None),
            tripped: Cell::new(false),
            depth: Cell::new(0),
        }
    }

    /// The bytes the evaluation holds: what this thread allocated since it started and did not
    /// free (the Starlark heap's arena, and what lives on the Rust heap: big integers, dict
    /// tables), less the arena's room not yet filled; never less than the arena's filled
    /// bytes (all there is to count where the counting allocator is not installed).
    fn used(&self, heap: Heap) -> usize {
        let net = crate::counting_alloc::thread_net_bytes() - self.allocated_at_start;
        let net = usize::try_from(net).unwrap_or(0);
        heap.allocated_bytes()
            .max(net.saturating_sub(heap.available_bytes()))
    }

    /// The first bound exceeded, if any.
    pub(crate) fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded.borrow().clone()
    }

    /// Records that a bound was exceeded (the first one counts) and returns the error that
    /// stops the evaluation; its text is never looked at, [`Guard::exceeded`] is.
    pub(crate) fn trip(&self, exceeded: Exceeded) -> starlark::Error {
        let mut slot = self.exceeded.borrow_mut();
        if slot.is_none() {
            *slot = Some(exceeded.clone());
            self.tripped.set(true);
        }
        starlark::Error::new_other(exceeded.into_error())
    }

    /// Checks the range steps, the heap and the clock; fails once any bound is exceeded.
    pub(crate) fn check(&self, heap: Heap) -> Result<(), starlark::Error> {
        self.check_heap(heap)?;
        self.check_clock()
    }

    /// The range steps and the heap (cheap: before every statement).
    pub(crate) fn check_heap(&self, heap: Heap) -> Result<(), starlark::Error> {
        if self.tripped.get() {
            if let Some(exceeded) = self.exceeded() {
                return Err(starlark::Error::new_other(exceeded.into_error()));
            }
        }
        if range_steps_reset() {
            return Err(self.trip(Exceeded::Range));
        }
        if self.used(heap) > self.memory_bytes {
            return Err(self.trip(Exceeded::Memory(self.memory_bytes)));
        }
        Ok(())
    }

    /// The clock.
    fn check_clock(&self) -> Result<(), starlark::Error> {
        if self.started.elapsed() > self.time {
            return Err(self.trip(Exceeded::Time(self.time)));
        }
        Ok(())
    }

    /// Whether `x * n` may run: the result must fit in what is left of the memory bound.
    pub(crate) fn repetition_fits(
        &self,
        sequence: Value,
        count: i32,
        heap: Heap,
    ) -> Result<(), starlark::Error> {
        let Some(item_bytes) = repetition_item_bytes(sequence) else {
            return Ok(());
        };
        self.output_fits(Some(item_bytes.saturating_mul(count.max(0) as usize)), heap)
    }

    /// Whether a result of `bytes` may be built: it must fit in what is left of the memory
    /// bound.
    pub(crate) fn output_fits(
        &self,
        bytes: Option<usize>,
        heap: Heap,
    ) -> Result<(), starlark::Error> {
        match bytes {
            Some(bytes) if bytes <= self.bytes_left(heap) => Ok(()),
            _ => Err(self.trip(Exceeded::Memory(self.memory_bytes))),
        }
    }

    /// What is left of the memory bound.
    pub(crate) fn bytes_left(&self, heap: Heap) -> usize {
        self.memory_bytes.saturating_sub(self.used(heap))
    }

    /// Fails when the innermost frame is a `def` already on the call stack.
    fn check_recursion(&self, eval: &Evaluator) -> Result<(), starlark::Error> {
        let depth = eval.call_stack_count();
        let deeper = depth > self.depth.get();
        self.depth.set(depth);
        // A chain of calls can hold every `def` once, with the module's frame and a built-in or
        // two between them, without any `def` twice: reading the whole stack (which allocates)
        // is only worth it beyond that depth. Recursion that goes on goes deeper and is caught
        // there; one that stops within that depth has done no harm.
        if !deeper || depth <= self.functions.len() + RECURSION_SLACK {
            return Ok(());
        }
        let stack = eval.call_stack();
        let Some((innermost, outer)) = stack.frames.split_last() else {
            return Ok(());
        };
        if self.functions.contains(&innermost.name)
            && outer.iter().any(|frame| frame.name == innermost.name)
        {
            return Err(self.trip(Exceeded::Recursion(innermost.name.clone())));
        }
        Ok(())
    }
}

/// The bytes `x * 1` takes for a string, list or tuple `x` (a list item is a pointer, counted
/// twice: the copy is built before it is moved to the heap); `None` for numbers.
fn repetition_item_bytes(sequence: Value) -> Option<usize> {
    if let Some(text) = sequence.unpack_str() {
        return Some(text.len());
    }
    match sequence.get_type() {
        "list" | "tuple" => {
            let length = sequence.length().ok()?;
            Some((length.max(0) as usize).saturating_mul(2 * std::mem::size_of::<usize>()))
        }
        _ => None,
    }
}

/// The bytes `a + b` builds when both are strings, lists or tuples (counted as
/// [`repetition_item_bytes`] counts them); `None` for anything else (numbers, dicts: no larger
/// than their operands, or refused).
pub(crate) fn sum_size(a: Value, b: Value) -> Option<usize> {
    repetition_item_bytes(a)?.checked_add(repetition_item_bytes(b)?)
}

/// The bytes of `value`'s text (`repr`, an upper bound for `str`), or `None` once it passes
/// `limit`. Lists, tuples and dicts are walked, so a list holding one big list many times is
/// measured at its real text size without building it; the walk stops at the limit.
pub(crate) fn text_size(value: Value, limit: usize) -> Option<usize> {
    /// What is left to measure at one level of nesting (depth first, so the walk holds one
    /// level per nesting, never a copy of a long list).
    enum Level<'v> {
        Items(std::slice::Iter<'v, Value<'v>>),
        Owned(std::vec::IntoIter<Value<'v>>),
    }
    let mut total = 0usize;
    let mut levels = vec![Level::Owned(vec![value].into_iter())];
    while let Some(level) = levels.last_mut() {
        let next = match level {
            Level::Items(items) => items.next().copied(),
            Level::Owned(items) => items.next(),
        };
        let Some(value) = next else {
            levels.pop();
            continue;
        };
        let size = if let Some(text) = value.unpack_str() {
            // Quotes, and an escape of up to 4 bytes for a byte that needs one.
            let escaped = text
                .bytes()
                .filter(|byte| *byte < 0x20 || matches!(byte, b'"' | b'\\' | 0x7f))
                .count();
            text.len() + 2 + 3 * escaped
        } else if let Some(list) = starlark::values::list::ListRef::from_value(value) {
            levels.push(Level::Items(list.content().iter()));
            2 + 2 * list.len()
        } else if let Some(tuple) = starlark::values::tuple::TupleRef::from_value(value) {
            levels.push(Level::Items(tuple.content().iter()));
            3 + 2 * tuple.len()
        } else if let Some(dict) = starlark::values::dict::DictRef::from_value(value) {
            let items: Vec<Value> = dict.iter().flat_map(|(key, item)| [key, item]).collect();
            let size = 2 + 2 * items.len();
            levels.push(Level::Owned(items.into_iter()));
            size
        } else {
            // Numbers, functions, the host's objects: small, or bounded by what the host gave.
            value.to_repr().len()
        };
        total = total.saturating_add(size);
        if total > limit {
            return None;
        }
    }
    Some(total)
}

/// Installs the checks on an evaluator; `guard` must outlive it.
pub(crate) fn install<'v, 'a, 'e: 'a>(eval: &mut Evaluator<'v, 'a, 'e>, guard: &Rc<Guard>) {
    let heap = eval.heap();
    let for_ticks = Rc::clone(guard);
    eval.set_check_cancelled(Box::new(move || for_ticks.check(heap).is_err()));
    eval.before_stmt_for_dap(BeforeStmtFunc::from_dyn(Box::new(StatementCheck {
        guard: Rc::clone(guard),
        statements: 0,
    })));
}

/// The check made before each statement.
struct StatementCheck {
    guard: Rc<Guard>,
    statements: u32,
}

impl<'e> BeforeStmtFuncDyn<'e> for StatementCheck {
    fn call<'v>(
        &mut self,
        _span: FileSpanRef,
        _continued: bool,
        eval: &mut Evaluator<'v, '_, 'e>,
    ) -> starlark::Result<()> {
        self.guard.check_heap(eval.heap())?;
        self.statements = self.statements.wrapping_add(1);
        if self.statements.is_multiple_of(STATEMENTS_PER_CLOCK) {
            self.guard.check_clock()?;
        }
        self.guard.check_recursion(eval)
    }
}

/// Range elements produced since the last check, on this thread.
#[derive(Clone, Copy, Default)]
struct RangeSteps {
    /// Whether an evaluation with bounds is running on this thread.
    active: bool,
    steps: u64,
    tripped: bool,
}

thread_local! {
    static RANGE_STEPS: Cell<RangeSteps> = const {
        Cell::new(RangeSteps { active: false, steps: 0, tripped: false })
    };
}

/// Called by a range for each element it produces: false (stop producing) once
/// [`RANGE_STEPS_MAX`] were produced since the last check.
pub(crate) fn range_step() -> bool {
    RANGE_STEPS.with(|cell| {
        let mut state = cell.get();
        if !state.active {
            return true;
        }
        if state.tripped || state.steps >= RANGE_STEPS_MAX {
            state.tripped = true;
            cell.set(state);
            return false;
        }
        state.steps += 1;
        cell.set(state);
        true
    })
}

/// Starts a new count; true when the limit was reached since the last check.
fn range_steps_reset() -> bool {
    RANGE_STEPS.with(|cell| {
        let mut state = cell.get();
        let tripped = state.tripped;
        state.steps = 0;
        cell.set(state);
        tripped
    })
}

/// Counts range steps on this thread while it lives (evaluations may nest: the previous count
/// comes back on drop).
pub(crate) struct RangeStepsScope {
    previous: RangeSteps,
}

impl RangeStepsScope {
    pub(crate) fn enter() -> Self {
        let previous = RANGE_STEPS.with(|cell| {
            cell.replace(RangeSteps {
                active: true,
                steps: 0,
                tripped: false,
            })
        });
        RangeStepsScope { previous }
    }
}

impl Drop for RangeStepsScope {
    fn drop(&mut self) {
        RANGE_STEPS.with(|cell| cell.set(self.previous));
    }
}
