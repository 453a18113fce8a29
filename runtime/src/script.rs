//! Scripts run on a member: `starling exec` and `starling run` land here.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use starling_stdlib::{Host, Limits, Script};
use starling_transport::Responder;

use crate::member::Member;
use crate::operation::{Operation, BUILTINS};
use crate::protocol::Reply;
use crate::Error;

/// Script built-ins backed by this member: each call becomes an [`Operation`].
pub struct MemberHost {
    member: Member,
    caller: crate::Caller,
}

impl MemberHost {
    /// Built-ins that run operations on `member` for `caller`.
    pub fn new(member: Member, caller: crate::Caller) -> MemberHost {
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
}

/// Runs a script, streaming its `print` lines to the client, and returns the final reply.
pub(crate) async fn exec(
    member: &Member,
    caller: crate::Caller,
    source: String,
    chunk_name: String,
    responder: &mut Responder,
) -> Reply {
    let (print, mut printed) = tokio::sync::mpsc::unbounded_channel();
    let host: Arc<dyn Host> = Arc::new(MemberHost::new(member.clone(), caller));
    let script = Script { source, chunk_name };
    let run = tokio::spawn(starling_stdlib::run(
        host,
        BUILTINS,
        script,
        Limits::default(),
        print,
    ));
    while let Some(line) = printed.recv().await {
        if responder.send(&Reply::Print(line)).await.is_err() {
            // The client went away; the script still ends within its limits.
            break;
        }
    }
    match run.await {
        Ok(Ok(value)) => Reply::ScriptDone(Ok(value.to_string())),
        Ok(Err(error)) => Reply::ScriptDone(Err(Error::Script(error.to_string()))),
        Err(error) => {
            Reply::ScriptDone(Err(Error::Internal(format!("script task failed: {error}"))))
        }
    }
}
