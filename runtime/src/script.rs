//! Scripts run on a member: `starling exec` and `starling run` land here.
//!
//! Lua runs on a thread of its own, never on the async runtime's worker threads, so Raft,
//! heartbeats and QUIC keep their latency while scripts compute: a script thread runs at a lower
//! CPU priority and drives its built-in calls through the runtime's handle. At most
//! [`SCRIPTS_RUNNING_MAX`] scripts run at once on a member; up to [`SCRIPTS_WAITING_MAX`] more
//! wait for a slot, and past that a script is refused at once as busy. Printed lines travel in a
//! bounded channel (a script that prints faster than its client reads waits), and a script whose
//! client went away is stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use starling_stdlib::{Host, Limits, Script};
use starling_transport::Responder;
use tokio::sync::Semaphore;

use crate::member::Member;
use crate::operation::{Operation, BUILTINS};
use crate::protocol::{Caller, Reply};
use crate::Error;

/// Scripts running at once on one member.
pub const SCRIPTS_RUNNING_MAX: usize = 4;
/// Scripts waiting for a running slot; one more is refused as busy.
pub const SCRIPTS_WAITING_MAX: usize = 32;
/// Printed lines buffered between a script and its client.
const PRINT_LINES_BUFFERED: usize = 64;
/// The `nice` value of script threads: the member's own work comes first.
const SCRIPT_THREAD_NICENESS: i32 = 10;

/// The slots scripts run in, on one member.
#[derive(Debug)]
pub(crate) struct ScriptSlots {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Default for ScriptSlots {
    fn default() -> Self {
        ScriptSlots {
            running: Arc::new(Semaphore::new(SCRIPTS_RUNNING_MAX)),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// Script built-ins backed by this member: each call becomes an [`Operation`].
pub struct MemberHost {
    member: Member,
    caller: Caller,
}

impl MemberHost {
    /// Built-ins that run operations on `member` for `caller`.
    pub fn new(member: Member, caller: Caller) -> MemberHost {
        MemberHost { member, caller }
    }
}

impl Host for MemberHost {
    fn call(&self, name: &str, args: Vec<Value>) -> BoxFuture<'static, Result<Value, String>> {
        let member = self.member.clone();
        let caller = self.caller.clone();
        let operation = Operation::from_call(name, &args);
        Box::pin(async move {
            let operation = operation.map_err(|error| error.to_string())?;
            member
                .execute(operation, caller)
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn log(&self, level: &str, line: &str) {
        let name = self.member.name();
        let context = serde_json::json!({ "source": "script", "client": self.caller.client });
        let event = crate::events::Event::logging(&name, level, line, context);
        self.member
            .inner
            .events
            .publish(event, crate::events::Source::Local, &name);
    }
}

/// A script a client asks a member to run.
pub(crate) struct ScriptRequest {
    /// Lua source.
    pub(crate) source: String,
    /// Name shown in error messages.
    pub(crate) chunk_name: String,
    /// `arg[1]`...
    pub(crate) args: Vec<String>,
}

/// Runs a script, streaming its `print` lines to the client, and returns the final reply.
pub(crate) async fn exec(
    member: &Member,
    caller: Caller,
    request: ScriptRequest,
    responder: &mut Responder,
) -> Reply {
    let ScriptRequest {
        source,
        chunk_name,
        args,
    } = request;
    let bytes = source.len() + args.iter().map(String::len).sum::<usize>();
    if bytes > starling_store::limits::SCRIPT_SOURCE_BYTES_MAX {
        return Reply::ScriptDone(Err(Error::Refused(format!(
            "the script and its arguments are {bytes} bytes long, over the limit of {} bytes",
            starling_store::limits::SCRIPT_SOURCE_BYTES_MAX
        ))));
    }
    let slots = &member.inner.scripts;
    if slots.waiting.fetch_add(1, Ordering::SeqCst) >= SCRIPTS_WAITING_MAX {
        slots.waiting.fetch_sub(1, Ordering::SeqCst);
        return Reply::ScriptDone(Err(Error::Busy(format!(
            "member {} is busy: {SCRIPTS_RUNNING_MAX} scripts run and {SCRIPTS_WAITING_MAX} wait; retry later",
            member.name()
        ))));
    }
    let permit = tokio::select! {
        permit = slots.running.clone().acquire_owned() => permit,
        _ = responder.client_gone() => {
            slots.waiting.fetch_sub(1, Ordering::SeqCst);
            return Reply::ScriptDone(Err(Error::Script("the client went away".to_string())));
        }
    };
    slots.waiting.fetch_sub(1, Ordering::SeqCst);
    let Ok(permit) = permit else {
        return Reply::ScriptDone(Err(Error::Internal(
            "the script slots are closed".to_string(),
        )));
    };
    let script = Script {
        source,
        chunk_name,
        args,
    };
    let (mut printed, outcome) =
        match start_thread(member, caller, script, Limits::default(), permit) {
            Ok(started) => started,
            Err(error) => return Reply::ScriptDone(Err(error)),
        };
    loop {
        let line = tokio::select! {
            line = printed.recv() => line,
            _ = responder.client_gone() => None,
        };
        let Some(line) = line else { break };
        if responder.send(&Reply::Print(line)).await.is_err() {
            break;
        }
    }
    // Dropping the receiver stops a script whose client went away.
    drop(printed);
    match outcome.await {
        Ok(Ok(value)) => Reply::ScriptDone(Ok(value.to_string())),
        Ok(Err(error)) => Reply::ScriptDone(Err(Error::Script(error.to_string()))),
        Err(_) => Reply::ScriptDone(Err(Error::Internal(
            "the script thread ended without an answer".to_string(),
        ))),
    }
}

/// What a script thread answers when it ends.
type Outcome = tokio::sync::oneshot::Receiver<Result<Value, starling_stdlib::Error>>;

/// Starts `script` on a thread of its own (holding `permit`, a running slot): its printed
/// lines come through the first receiver, its result through the second.
fn start_thread(
    member: &Member,
    caller: Caller,
    script: Script,
    limits: Limits,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(tokio::sync::mpsc::Receiver<String>, Outcome), Error> {
    let (print, printed) = tokio::sync::mpsc::channel(PRINT_LINES_BUFFERED);
    let host: Arc<dyn Host> = Arc::new(MemberHost::new(member.clone(), caller));
    let (done, outcome) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("starling-script".to_string())
        .spawn(move || {
            lower_this_thread_priority();
            let result =
                runtime.block_on(starling_stdlib::run(host, BUILTINS, script, limits, print));
            drop(permit);
            let _ = done.send(result);
        })
        .map_err(|error| Error::Internal(format!("cannot start a script thread: {error}")))?;
    Ok((printed, outcome))
}

/// Runs a stored script's run on this member, as the member itself: waits for a running
/// slot, runs `script` with `limits`, and answers its result and the first `kept_bytes` it
/// printed (the rest is read and dropped, so the script never waits on its output).
pub(crate) async fn run_captured(
    member: &Member,
    script: Script,
    limits: Limits,
    kept_bytes: usize,
) -> (Result<Value, starling_stdlib::Error>, String) {
    let failed = |message: String| {
        (
            Err(starling_stdlib::Error::Runtime { message }),
            String::new(),
        )
    };
    let Ok(permit) = member.inner.scripts.running.clone().acquire_owned().await else {
        return failed("the script slots are closed".to_string());
    };
    let (mut printed, outcome) = match start_thread(member, Caller::local(), script, limits, permit)
    {
        Ok(started) => started,
        Err(error) => return failed(error.to_string()),
    };
    let mut output = String::new();
    while let Some(line) = printed.recv().await {
        if output.len() < kept_bytes {
            output.push_str(&line);
            output.push('\n');
        }
    }
    let output = starling_store::scripts::kept(&output);
    match outcome.await {
        Ok(result) => (result, output),
        Err(_) => failed("the script thread ended without an answer".to_string()),
    }
}

/// Lowers the CPU priority of the calling thread (Linux applies `nice` per thread).
fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
        let result = unsafe {
            let thread_id = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread_id, SCRIPT_THREAD_NICENESS)
        };
        if result != 0 {
            tracing::debug!("could not lower a script thread's priority");
        }
    }
}
