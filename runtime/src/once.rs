//! Exactly-once writes: the request id of the operation being run, and the answer to a repeat.
//!
//! The leader runs a write inside [`scope`]; every command the operation proposes is tagged
//! with an id derived from the request id and the command's place in the operation
//! ([`command_id`]), so the state machine applies it once (`starling_store::requests`). A
//! request whose first command was already applied is answered from the cluster state by
//! [`replay`] instead of running again.

use std::cell::Cell;
use std::future::Future;

use serde_json::{json, Value};
use starling_store::{Command, TokenKind};

use crate::member::Member;
use crate::operation::Operation;
use crate::Error;

/// The request being run on this task, and how many commands it proposed so far.
struct RequestScope {
    request_id: u128,
    commands: Cell<u64>,
}

tokio::task_local! {
    static REQUEST: RequestScope;
}

/// Runs `work` as request `request_id`: the commands it proposes are tagged.
///
/// Not an `async fn`: one would hold `work` twice (as its argument and inside the scope it
/// awaits), doubling the size of every request's future, which is copied once per call.
pub(crate) fn scope<T>(request_id: u128, work: impl Future<Output = T>) -> impl Future<Output = T> {
    let scope = RequestScope {
        request_id,
        commands: Cell::new(0),
    };
    REQUEST.scope(scope, work)
}

/// The id of the `index`th command of request `request_id`.
pub(crate) fn command_id(request_id: u128, index: u64) -> u128 {
    request_id.wrapping_add(u128::from(index))
}

/// The id the next command proposed by the request being run will be tagged with, if a
/// request is being run.
pub(crate) fn next_command_id() -> Option<u128> {
    REQUEST
        .try_with(|scope| command_id(scope.request_id, scope.commands.get()))
        .ok()
}

/// Tags `command` with the next command id of the request being run, if any.
pub(crate) fn tag(command: Command) -> Command {
    let id = REQUEST.try_with(|scope| {
        let index = scope.commands.get();
        scope.commands.set(index + 1);
        command_id(scope.request_id, index)
    });
    match id {
        Ok(request_id) => Command::Once {
            request_id,
            command: Box::new(command),
        },
        Err(_) => command,
    }
}

/// The answer to a write whose first command was already applied: its first outcome, with the
/// value rebuilt from the state where the operation returns one.
pub(crate) async fn replay(
    member: &Member,
    operation: &Operation,
    request_id: u128,
    outcome: Result<(), String>,
) -> Result<Value, Error> {
    outcome.map_err(Error::Refused)?;
    let token = |name: &str, kind: TokenKind, field: &str| {
        member
            .local_state(|state| state.tokens_of(kind).get(name).map(crate::cluster::join::payload_of))
            .map(|payload| json!({field: name, "token": payload.encode(), "expires_at": payload.expires_at}))
            .ok_or_else(|| Error::Refused(format!("the token for \"{name}\" was used or revoked since")))
    };
    match operation {
        Operation::ClusterAdd { name } => token(name, TokenKind::Join, "server_name"),
        Operation::TrustAdd { name } => token(name, TokenKind::Client, "name"),
        Operation::TrustClaim { .. } => Ok(Value::String(member.inner.ca_cert_pem.clone())),
        Operation::Join(request) => Err(Error::Refused(format!(
            "member \"{}\" was admitted by an earlier attempt of this join whose answer was lost; \
             remove it and join again with a new token",
            request.name
        ))),
        // `scripts.run` claims its run first: the claim's id is that command's id.
        Operation::Script(crate::automation::scripts::ScriptOperation::Run { .. }) => {
            member.run_by_claim(command_id(request_id, 0))
        }
        // A create's first command writes the record; the rest of it (the root file system on
        // the member) may not have happened: finish it.
        Operation::Instance(crate::instances::ops::InstanceOperation::Create(request)) => {
            Box::pin(member.resume_create(request, command_id(request_id, 0), true)).await
        }
        // A delete's first command marks the record; the rest of it (the files, then the
        // record's removal) may not have happened, or may be under way still: finished here.
        Operation::Instance(crate::instances::ops::InstanceOperation::Delete {
            project,
            name,
            force,
        }) => Box::pin(member.resume_delete(project, name, *force)).await,
        // A move's first command claims the instance; whether the move then landed is not
        // known here, and running it again could move the instance twice.
        Operation::Instance(crate::instances::ops::InstanceOperation::Move { name, .. }) => {
            Err(Error::OutcomeUnknown(format!(
                "an earlier attempt of this move of \"{name}\" claimed the instance; whether it \
                 moved is not known here: see instances.get and instances.moves()"
            )))
        }
        // An evacuation or restore goes on with whichever member leads: its answer is the
        // record's summary once it ends, as the first attempt would have answered.
        Operation::Evacuation(
            crate::evacuation::ops::EvacuationOperation::Evacuate { member: name, .. }
            | crate::evacuation::ops::EvacuationOperation::Restore { member: name, .. },
        ) => member.evacuation_outcome(name).await,
        // A kv write proposes one command: its answer is kept under that command's id.
        Operation::Kv(
            crate::automation::kv::KvOperation::Cas { .. }
            | crate::automation::kv::KvOperation::Incr { .. },
        ) => member.kv_result(command_id(request_id, 0)),
        _ => Ok(Value::Null),
    }
}
