//! Instruction budget, wall-clock deadline, printed output, cancellation and
//! the fatal-limit latch.
//!
//! A count hook fires every [`Guard::hook_step`] instructions, charges them to
//! the budget, and checks the deadline and whether the receiver of printed
//! lines is still there (dropping it is how a caller cancels a script). Rust
//! code working for the script checks the same way: the pattern matcher
//! charges its steps, and everything that waits (`print` on a full channel,
//! `sleep`, host calls) goes through [`Guard::wait`].
//!
//! Once any limit trips, the guard latches it: the hook is re-armed to fire on
//! every instruction of the running coroutine ([`abort`] does the same for
//! limits noticed outside the hook), every later hook call fails again, and
//! the script's catching functions (`pcall`, `xpcall`, `coroutine.resume`,
//! `coroutine.wrap`, `coroutine.close`) re-raise it, so no Lua frame can turn a
//! tripped limit into a normal return. The session consults the latch first
//! when it reports the outcome.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, VmState};
use tokio::sync::mpsc::Sender;

use crate::{Error, Limits};

/// Largest number of instructions between two hook calls.
const MAX_HOOK_STEP_INSTRUCTIONS: u64 = 10_000;

/// Deadline used when `now + wall_clock` does not fit in an [`Instant`].
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A limit that ended the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fatal {
    /// The instruction budget is spent.
    Instructions,
    /// An allocation hit the memory limit.
    Memory,
    /// The wall-clock deadline passed.
    Timeout,
    /// The script printed more than its output cap.
    Output,
    /// The receiver of printed lines was dropped: the caller cancelled the script.
    Disconnected,
    /// The session was interrupted (Ctrl-C in the REPL).
    Interrupted,
}

/// Mutable part of the guard, reset at the start of each chunk.
#[derive(Debug)]
struct Meter {
    used_instructions: u64,
    deadline: Instant,
    /// Bytes printed so far, each line counted with its line break.
    printed_bytes: usize,
    fatal: Option<Fatal>,
}

/// Shared between the hook, the async globals and the session.
#[derive(Debug)]
pub(crate) struct Guard {
    limits: Limits,
    meter: Mutex<Meter>,
    /// Where printed lines go. Its receiver being dropped cancels the script.
    print: Sender<String>,
    /// Set by [`Guard::interrupt`] until the next chunk begins.
    interrupted: std::sync::atomic::AtomicBool,
    /// Wakes waits when the chunk is interrupted.
    interruption: tokio::sync::Notify,
}

impl Guard {
    /// A guard for `limits` whose script prints to `print`; call
    /// [`Guard::begin`] before running a chunk.
    pub(crate) fn new(limits: Limits, print: Sender<String>) -> Self {
        let meter = Meter {
            used_instructions: 0,
            deadline: deadline_after(limits.wall_clock),
            printed_bytes: 0,
            fatal: None,
        };
        Guard {
            limits,
            meter: Mutex::new(meter),
            print,
            interrupted: std::sync::atomic::AtomicBool::new(false),
            interruption: tokio::sync::Notify::new(),
        }
    }

    fn meter(&self) -> MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits this guard enforces.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes a result built outside Lua's allocator (JSON text, `gsub`'s
    /// output) may take: the memory limit, if any.
    pub(crate) fn result_budget_bytes(&self) -> usize {
        match self.limits.memory_bytes {
            0 => usize::MAX,
            bytes => bytes,
        }
    }

    /// Starts a fresh budget, deadline and output allowance, clearing any
    /// latched limit.
    pub(crate) fn begin(&self) {
        let mut meter = self.meter();
        meter.used_instructions = 0;
        meter.deadline = deadline_after(self.limits.wall_clock);
        meter.printed_bytes = 0;
        meter.fatal = None;
        self.interrupted
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the chunk running now at its next check (a later chunk runs normally).
    pub(crate) fn interrupt(&self) {
        self.interrupted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.interruption.notify_waiters();
    }

    fn is_interrupted(&self) -> bool {
        self.interrupted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the chunk is interrupted.
    async fn interrupted(&self) {
        loop {
            let notified = self.interruption.notified();
            if self.is_interrupted() {
                return;
            }
            notified.await;
        }
    }

    /// True when the receiver of printed lines is gone: the script is cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.print.is_closed()
    }

    /// Instructions between two hook calls while no limit has tripped.
    pub(crate) fn hook_step(&self) -> u32 {
        let step = self
            .limits
            .instructions
            .clamp(1, MAX_HOOK_STEP_INSTRUCTIONS);
        u32::try_from(step).unwrap_or(u32::MAX)
    }

    /// When the current chunk must be finished.
    pub(crate) fn deadline(&self) -> Instant {
        self.meter().deadline
    }

    /// The latched limit, if any.
    pub(crate) fn fatal(&self) -> Option<Fatal> {
        self.meter().fatal
    }

    /// Latches `fatal` unless another limit tripped first; returns the latched one.
    pub(crate) fn trip(&self, fatal: Fatal) -> Fatal {
        *self.meter().fatal.get_or_insert(fatal)
    }

    /// Charges `instructions` and checks every limit; returns the latched one.
    pub(crate) fn charge(&self, instructions: u64) -> Option<Fatal> {
        let mut meter = self.meter();
        meter.used_instructions = meter.used_instructions.saturating_add(instructions);
        if meter.fatal.is_none() {
            if meter.used_instructions > self.limits.instructions {
                meter.fatal = Some(Fatal::Instructions);
            } else if self.is_cancelled() {
                meter.fatal = Some(Fatal::Disconnected);
            } else if self.is_interrupted() {
                meter.fatal = Some(Fatal::Interrupted);
            } else if Instant::now() >= meter.deadline {
                meter.fatal = Some(Fatal::Timeout);
            }
        }
        meter.fatal
    }

    /// Awaits `work` unless the deadline passes first ([`Fatal::Timeout`]) or
    /// the receiver of printed lines is dropped ([`Fatal::Disconnected`]).
    pub(crate) async fn wait<F: Future>(&self, work: F) -> Result<F::Output, Fatal> {
        let deadline = self.deadline();
        tokio::select! {
            biased;
            output = work => Ok(output),
            () = self.print.closed() => Err(self.trip(Fatal::Disconnected)),
            () = self.interrupted() => Err(self.trip(Fatal::Interrupted)),
            () = tokio::time::sleep_until(deadline.into()) => Err(self.trip(Fatal::Timeout)),
        }
    }

    /// Sends one printed line, waiting while the channel is full (within the
    /// deadline). A line that would take the chunk's output past
    /// [`Limits::print_bytes`] is not sent and trips [`Fatal::Output`].
    pub(crate) async fn print(&self, line: String) -> Result<(), Fatal> {
        self.count_printed(line.len().saturating_add(1))?;
        match self.wait(self.print.send(line)).await? {
            Ok(()) => Ok(()),
            Err(_receiver_dropped) => Err(self.trip(Fatal::Disconnected)),
        }
    }

    fn count_printed(&self, bytes: usize) -> Result<(), Fatal> {
        let mut meter = self.meter();
        if let Some(fatal) = meter.fatal {
            return Err(fatal);
        }
        let total = meter.printed_bytes.saturating_add(bytes);
        if total > self.limits.print_bytes {
            return Err(*meter.fatal.insert(Fatal::Output));
        }
        meter.printed_bytes = total;
        Ok(())
    }

    /// The [`Error`] reported for `fatal`.
    pub(crate) fn error(&self, fatal: Fatal) -> Error {
        match fatal {
            Fatal::Instructions => Error::InstructionLimit {
                instructions: self.limits.instructions,
            },
            Fatal::Memory => Error::MemoryLimit {
                bytes: self.limits.memory_bytes,
            },
            Fatal::Timeout => Error::Timeout {
                seconds: self.limits.wall_clock.as_secs_f64(),
            },
            Fatal::Output => Error::OutputLimit {
                bytes: self.limits.print_bytes,
            },
            Fatal::Disconnected => Error::Disconnected,
            Fatal::Interrupted => Error::Interrupted,
        }
    }

    /// The Lua error raised into the script for `fatal`.
    pub(crate) fn lua_error(&self, fatal: Fatal) -> mlua::Error {
        mlua::Error::runtime(self.error(fatal).to_string())
    }
}

fn deadline_after(wall_clock: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wall_clock)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Installs the count hook for all coroutines created from now on (and the
/// current one), firing every `step` instructions.
pub(crate) fn install_hook(lua: &Lua, guard: &Arc<Guard>, step: u32) -> mlua::Result<()> {
    let guard = Arc::clone(guard);
    let triggers = HookTriggers::new().every_nth_instruction(step.max(1));
    lua.set_global_hook(triggers, move |lua, _debug| on_hook(lua, &guard, step))
}

/// Latches `fatal` (unless another limit tripped first) and returns the error
/// to raise into the script. The hook is re-armed to fire on every
/// instruction, so a frame that catches the error cannot run even one more
/// instruction normally. Rust functions that notice a limit (the pattern
/// matcher, `print`) end the script through this, as the hook does.
pub(crate) fn abort(lua: &Lua, guard: &Arc<Guard>, fatal: Fatal) -> mlua::Error {
    let fatal = guard.trip(fatal);
    if let Err(err) = install_hook(lua, guard, 1) {
        return err;
    }
    guard.lua_error(fatal)
}

fn on_hook(lua: &Lua, guard: &Arc<Guard>, step: u32) -> mlua::Result<VmState> {
    match guard.charge(u64::from(step)) {
        None => Ok(VmState::Continue),
        Some(fatal) if step > 1 => Err(abort(lua, guard, fatal)),
        Some(fatal) => Err(guard.lua_error(fatal)),
    }
}
