//! `starling exec NAME -- CMD...`: a command's output streamed as it comes.
//!
//! The client sends `Request::InstanceExec` to any member. A member running the instance's
//! container runs the command itself (an instance never runs on two members, so no one needs
//! to be asked); any other asks the leader where the instance is and relays
//! `Request::InstanceExecLocal` to that member.
//! The instance's member answers `ExecOutput` frames while the command runs, then `ExecExit`.
//! Unlike the other operations this does not go through the leader: nothing is written, and
//! a command's output should not take a detour.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use starling_store::MemberStatus;
use starling_transport::Responder;

use super::driver::{ExecRequest, InstanceKey};
use super::local::driver_error;
use crate::member::Member;
use crate::protocol::{Reply, Request};
use crate::Error;

/// The longest a command may stay silent before the relay gives up on it.
const SILENCE_MAX: Duration = Duration::from_secs(3600);
/// Bytes read from a command's pipe at once.
const PIECE_BYTES: usize = 64 * 1024;
/// Pieces read ahead of a slow client, per command.
const PIECES_AHEAD: usize = 16;

/// What `Request::InstanceExec` asks.
#[derive(Clone, Debug)]
pub struct ExecCall {
    /// The project.
    pub project: String,
    /// The instance.
    pub name: String,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (`/` when absent).
    pub cwd: Option<String>,
}

impl Member {
    /// Runs `call` on the instance's member and relays its output to `responder`; answers how
    /// it ended.
    pub(crate) async fn relay_exec(&self, call: ExecCall, responder: &mut Responder) -> Reply {
        match self.relay_exec_inner(call, responder).await {
            Ok(reply) => reply,
            Err(error) => Reply::ExecExit(Err(error)),
        }
    }

    async fn relay_exec_inner(
        &self,
        call: ExecCall,
        responder: &mut Responder,
    ) -> Result<Reply, Error> {
        if call.argv.is_empty() {
            return Err(Error::Refused("exec needs a command".to_string()));
        }
        let key = InstanceKey::new(call.project.clone(), call.name.clone());
        let cwd = call.cwd.clone().unwrap_or_else(|| "/".to_string());
        // An instance never runs on two members: a container running here is the instance, so
        // the command runs here without asking the leader where it is (a round trip saved, and
        // no leader needed).
        if self.runs_here(&key).await {
            let mut request = ExecRequest::new(call.argv);
            request.env = call.env;
            request.cwd = cwd.into();
            return Ok(self.exec_stream(&key, request, responder).await);
        }
        // Where the instance is, by the leader's records: this member's copy may not have
        // the instance a client created a moment ago through it, or its latest move.
        let get = crate::Operation::Instance(super::ops::InstanceOperation::Get {
            project: call.project.clone(),
            name: call.name.clone(),
        });
        let found = Box::pin(self.execute(get, crate::Caller::local())).await?;
        let location = found["location"].as_str().unwrap_or_default().to_string();
        if location == self.name() {
            let mut request = ExecRequest::new(call.argv);
            request.env = call.env;
            request.cwd = cwd.into();
            return Ok(self.exec_stream(&key, request, responder).await);
        }
        let location = &location;
        let known = self.local_state(|state| state.members.get(location).cloned());
        let address = match known {
            // An evacuated member still runs what it holds.
            Some(record) if record.status == MemberStatus::Offline => {
                return Err(Error::Refused(format!(
                    "instance \"{}\" is on member \"{location}\", which is {}",
                    call.name,
                    record.status.as_str()
                )));
            }
            Some(record) => record.address,
            // This member's copy does not know the member yet (it joined, or this member
            // did, a moment ago): the leader's records say where it is.
            None => {
                let member = crate::Operation::ClusterMember {
                    name: location.clone(),
                };
                let found = Box::pin(self.execute(member, crate::Caller::local())).await?;
                found["address"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::Internal(format!("the record of member {location} has no address"))
                    })?
            }
        };
        let request = Request::InstanceExecLocal {
            key,
            argv: call.argv,
            env: call.env,
            cwd,
        };
        let mut answers = self.request_stream(&address, &request).await?;
        loop {
            match answers.next::<Reply>(SILENCE_MAX).await? {
                Some(output @ Reply::ExecOutput { .. }) => {
                    if responder.send(&output).await.is_err() {
                        return Ok(Reply::ExecExit(Err(Error::Transport(
                            "the client went away".to_string(),
                        ))));
                    }
                }
                Some(done @ Reply::ExecExit(_)) => return Ok(done),
                Some(Reply::Refused(error)) => return Err(error),
                Some(other) => {
                    return Err(Error::Internal(format!(
                        "unexpected reply to an exec: {other:?}"
                    )))
                }
                None => {
                    return Err(Error::Transport(format!(
                        "member {location} ended the exec without its exit code"
                    )))
                }
            }
        }
    }

    /// Runs `request` in container `key` of this member, sending its output to `responder`
    /// as it comes; answers its exit code.
    pub(crate) async fn exec_stream(
        &self,
        key: &InstanceKey,
        request: ExecRequest,
        responder: &mut Responder,
    ) -> Reply {
        let spawned = self.spawn_exec(key, request).await;
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => return Reply::ExecExit(Err(error)),
        };
        let (pieces, mut arriving) = tokio::sync::mpsc::channel(PIECES_AHEAD);
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .enumerate()
        .filter_map(|(index, pipe)| pipe.map(|pipe| (index == 1, pipe)))
        .map(|(stderr, mut pipe)| {
            let pieces = pieces.clone();
            tokio::task::spawn_blocking(move || {
                let mut buffer = vec![0u8; PIECE_BYTES];
                while let Ok(read) = pipe.read(&mut buffer) {
                    if read == 0
                        || pieces
                            .blocking_send((stderr, buffer[..read].to_vec()))
                            .is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
        drop(pieces);
        let mut client_gone = false;
        while let Some((stderr, bytes)) = arriving.recv().await {
            if !client_gone
                && responder
                    .send(&Reply::ExecOutput { stderr, bytes })
                    .await
                    .is_err()
            {
                // The command runs to its end; its output has nowhere to go.
                client_gone = true;
            }
        }
        for reader in readers {
            let _ = reader.await;
        }
        let name = self.name();
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .map_err(|error| Error::Internal(error.to_string()))
            .and_then(|result| result.map_err(|error| driver_error(&name, error)));
        Reply::ExecExit(exit)
    }
}
