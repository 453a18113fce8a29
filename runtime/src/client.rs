//! [`Client`]: how the command line, the REPL and tools talk to a member.
//!
//! A local client reads the member's data directory (its address, the CA certificate and the
//! local administrator's identity). A remote client uses its own certificate, made trusted once
//! with a token (`starling remote add ADDRESS TOKEN`), and pins the cluster CA it learnt then.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use starling_transport::{Calls, Connection, Endpoint, EndpointConfig, Identity, ServerTrust};

use crate::datadir::DataDir;
use crate::operation::Operation;
use crate::protocol::{Reply, Request};
use crate::token::TokenPayload;
use crate::Error;

/// How long an operation may take end to end (it may be forwarded to the leader).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The answer to an operation: its JSON value, or the error it failed with.
fn operation_answer(reply: Reply) -> Result<Value, Error> {
    match reply {
        Reply::Operation(Ok(text)) => {
            serde_json::from_str(&text).map_err(|error| Error::Internal(error.to_string()))
        }
        Reply::Operation(Err(error)) | Reply::Refused(error) => Err(error),
        other => Err(Error::Internal(format!("unexpected reply: {other:?}"))),
    }
}

/// Bytes per upload request (a trusted client's request may be up to 32 MiB).
const UPLOAD_PIECE_BYTES: usize = 4 * 1024 * 1024;
/// How long a script may stay silent before the client gives up on it.
const SCRIPT_SILENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one member.
pub struct Client {
    endpoint: Endpoint,
    connection: Connection,
    /// The stream operations go on, opened at the first (again after it broke).
    calls: std::sync::Mutex<Option<Arc<OperationCalls>>>,
}

/// Operations as numbered calls on one stream (see `starling_transport::calls`).
type OperationCalls = Calls<Request, Reply>;

/// Remotes a client knows, saved in its configuration directory.
#[derive(Default, Serialize, Deserialize)]
struct Remotes {
    /// By address: the cluster CA certificate learnt when the remote was added.
    remotes: BTreeMap<String, RemoteEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct RemoteEntry {
    ca_cert_pem: String,
}

impl Client {
    /// Connects to the member whose data directory is `dir`, as its local administrator.
    pub async fn local(dir: &Path) -> Result<Client, Error> {
        let data = DataDir::new(dir);
        let file = data.load_member()?;
        let identity = data.load_identity("admin")?;
        let trust = ServerTrust::Ca {
            ca_cert_pem: data.load_ca()?,
        };
        Client::connect(identity, &file.address, &trust).await
    }

    /// Connects to a remote member added before with [`Client::add_remote`].
    pub async fn remote(config_dir: &Path, address: &str) -> Result<Client, Error> {
        let remotes = load_remotes(config_dir)?;
        let entry = remotes.remotes.get(address).ok_or_else(|| {
            Error::Local(format!(
                "unknown remote {address}: add it first with `starling remote add {address} TOKEN`"
            ))
        })?;
        let identity = client_identity(config_dir)?;
        Client::connect(
            identity,
            address,
            &ServerTrust::Ca {
                ca_cert_pem: entry.ca_cert_pem.clone(),
            },
        )
        .await
    }

    /// Makes this client's certificate trusted by the cluster at `address` with a trust token.
    pub async fn add_remote(config_dir: &Path, address: &str, token: &str) -> Result<(), Error> {
        let payload = TokenPayload::decode(token)?;
        let identity = client_identity(config_dir)?;
        let trust = ServerTrust::PinnedCa {
            fingerprint: payload.fingerprint.clone(),
        };
        let client = Client::connect(identity, address, &trust).await?;
        let request = Request::TrustClaim {
            name: payload.server_name.clone(),
            secret: payload.secret.clone(),
        };
        let ca_cert_pem = match client
            .connection
            .request::<Request, Reply>(&request, OPERATION_TIMEOUT)
            .await?
        {
            Reply::Trusted(result) => result?,
            Reply::Refused(error) => return Err(error),
            other => {
                return Err(Error::Internal(format!(
                    "unexpected reply to a trust claim: {other:?}"
                )))
            }
        };
        client.close();
        let mut remotes = load_remotes(config_dir)?;
        remotes
            .remotes
            .insert(address.to_string(), RemoteEntry { ca_cert_pem });
        save_json(&config_dir.join("remotes.json"), &remotes)
    }

    async fn connect(
        identity: Identity,
        address: &str,
        trust: &ServerTrust,
    ) -> Result<Client, Error> {
        let socket = crate::network::resolve(address)
            .await
            .map_err(|error| Error::Transport(format!("{address}: {error}")))?;
        let bind = if socket.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let bind: SocketAddr = bind
            .parse()
            .map_err(|_| Error::Internal("bad bind address".to_string()))?;
        let endpoint = Endpoint::new(EndpointConfig {
            identity,
            bind,
            serve: false,
        })?;
        let connection = endpoint.connect(socket, trust).await.map_err(|error| {
            Error::Transport(format!("cannot reach the member at {address}: {error}"))
        })?;
        Ok(Client {
            endpoint,
            connection,
            calls: std::sync::Mutex::new(None),
        })
    }

    /// Runs an operation on the member (which forwards it to the leader if needed).
    pub async fn operation(&self, operation: Operation) -> Result<Value, Error> {
        self.operation_with_id(operation, crate::token::random_u128()?)
            .await
    }

    /// Runs an operation with a request id of the caller's choosing: sending the same
    /// operation with the same id again (after an ambiguous error) applies it once and answers
    /// with the first outcome.
    pub async fn operation_with_id(
        &self,
        operation: Operation,
        request_id: u128,
    ) -> Result<Value, Error> {
        let timeout = OPERATION_TIMEOUT + operation.time_budget().unwrap_or_default();
        let request = Request::Operation {
            operation,
            caller: crate::Caller {
                request_id: Some(request_id),
                ..crate::Caller::default()
            },
        };
        let calls = self.calls().await?;
        operation_answer(calls.call(&request, timeout).await?)
    }

    /// The call stream for operations: the open one, or a new one if there is none or it broke.
    async fn calls(&self) -> Result<Arc<OperationCalls>, Error> {
        let open = self
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .filter(|calls| !calls.is_broken());
        if let Some(calls) = open {
            return Ok(calls);
        }
        let calls: Arc<OperationCalls> = Arc::new(
            self.connection
                .open_calls(&Request::Calls, crate::serve::CALLS_IN_FLIGHT_MAX)
                .await?,
        );
        *self
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(calls.clone());
        Ok(calls)
    }

    /// The raw stream rate from member `from` to the member this client talks to: it takes
    /// `bytes` zero bytes from `from` the way an image copy does, without the disk. Answers
    /// the bytes received and the seconds taken.
    pub async fn stream_probe_from(&self, from: &str, bytes: u64) -> Result<(u64, f64), Error> {
        let request = Request::StreamProbeFrom {
            from: from.to_string(),
            bytes,
        };
        match self
            .connection
            .request::<Request, Reply>(&request, OPERATION_TIMEOUT)
            .await?
        {
            Reply::Probe { bytes, seconds } => Ok((bytes, seconds)),
            Reply::Refused(error) => Err(error),
            other => Err(Error::Internal(format!(
                "unexpected reply to a stream probe: {other:?}"
            ))),
        }
    }

    /// `cluster add NAME`: a join token for a new member, as the string the joiner needs.
    pub async fn join_token(&self, name: &str) -> Result<String, Error> {
        let added = self
            .operation(Operation::ClusterAdd {
                name: name.to_string(),
            })
            .await?;
        added["token"].as_str().map(str::to_string).ok_or_else(|| {
            Error::Internal(format!(
                "the answer to cluster.add({name}) has no token: {added}"
            ))
        })
    }

    /// Runs a Lua script on the member; `on_print` sees each printed line as it happens.
    pub async fn exec(
        &self,
        source: &str,
        chunk_name: &str,
        on_print: impl FnMut(&str),
    ) -> Result<Value, Error> {
        self.exec_with_args(source, chunk_name, &[], on_print).await
    }

    /// [`Client::exec`] with `args` for the script's global `arg` (`arg[1]`...).
    pub async fn exec_with_args(
        &self,
        source: &str,
        chunk_name: &str,
        args: &[String],
        mut on_print: impl FnMut(&str),
    ) -> Result<Value, Error> {
        let request = Request::Exec {
            source: source.to_string(),
            chunk_name: chunk_name.to_string(),
            args: args.to_vec(),
        };
        let mut stream = self.connection.request_stream(&request).await?;
        loop {
            match stream.next::<Reply>(SCRIPT_SILENCE_TIMEOUT).await? {
                Some(Reply::Print(line)) => on_print(&line),
                Some(Reply::ScriptDone(Ok(text))) => {
                    return serde_json::from_str(&text)
                        .map_err(|error| Error::Internal(error.to_string()))
                }
                Some(Reply::ScriptDone(Err(error))) | Some(Reply::Refused(error)) => {
                    return Err(error)
                }
                Some(other) => return Err(Error::Internal(format!("unexpected reply: {other:?}"))),
                None => {
                    return Err(Error::Transport(
                        "the member closed the script's stream".to_string(),
                    ))
                }
            }
        }
    }

    /// Watches the member's events of `types` (all when empty), from the whole cluster, until
    /// `on_event` answers false or the member goes away (an error: a member always says it is
    /// there, every few seconds).
    pub async fn monitor(
        &self,
        types: &[String],
        mut on_event: impl FnMut(&crate::events::Event) -> bool,
    ) -> Result<(), Error> {
        let request = Request::Monitor {
            types: types.to_vec(),
        };
        let mut stream = self.connection.request_stream(&request).await?;
        let silence = crate::events::monitor::KEEPALIVE * 3;
        loop {
            match stream.next::<Reply>(silence).await? {
                Some(Reply::Event(event)) => {
                    if !on_event(&event) {
                        return Ok(());
                    }
                }
                Some(Reply::Ack) => {}
                Some(Reply::Refused(error)) => return Err(error),
                Some(other) => return Err(Error::Internal(format!("unexpected reply: {other:?}"))),
                None => {
                    return Err(Error::Transport(
                        "the member closed the event stream".to_string(),
                    ))
                }
            }
        }
    }

    /// Runs a command in an instance (`exec NAME -- CMD...`); `on_output(stderr, bytes)` sees
    /// its output as it comes. Answers its exit code.
    pub async fn exec_instance(
        &self,
        call: crate::instances::stream::ExecCall,
        mut on_output: impl FnMut(bool, &[u8]),
    ) -> Result<i32, Error> {
        let request = Request::InstanceExec {
            project: call.project,
            name: call.name,
            argv: call.argv,
            env: call.env,
            cwd: call.cwd,
        };
        let mut stream = self.connection.request_stream(&request).await?;
        loop {
            match stream.next::<Reply>(Duration::from_secs(3600)).await? {
                Some(Reply::ExecOutput { stderr, bytes }) => on_output(stderr, &bytes),
                Some(Reply::ExecExit(result)) => return result,
                Some(Reply::Refused(error)) => return Err(error),
                Some(other) => return Err(Error::Internal(format!("unexpected reply: {other:?}"))),
                None => {
                    return Err(Error::Transport(
                        "the member closed the exec's stream".to_string(),
                    ))
                }
            }
        }
    }

    /// Uploads the image file at `path` and imports it on the member (`image import`);
    /// `progress(done, total)` is called after each piece. Answers as `images.import`.
    pub async fn upload_image(
        &self,
        path: &Path,
        aliases: &[String],
        public: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Value, Error> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|error| Error::Local(format!("{}: {error}", path.display())))?;
        let total = file
            .metadata()
            .await
            .map_err(|error| Error::Local(format!("{}: {error}", path.display())))?
            .len();
        let upload = crate::token::random_u128()?;
        let mut offset = 0u64;
        let mut buffer = vec![0; UPLOAD_PIECE_BYTES];
        loop {
            let mut filled = 0;
            while filled < buffer.len() {
                let read = file
                    .read(&mut buffer[filled..])
                    .await
                    .map_err(|error| Error::Local(format!("{}: {error}", path.display())))?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            if filled == 0 {
                break;
            }
            let request = Request::ImageUpload {
                upload,
                offset,
                bytes: buffer[..filled].to_vec(),
            };
            match self
                .connection
                .request::<Request, Reply>(&request, OPERATION_TIMEOUT)
                .await?
            {
                Reply::Ack => {}
                Reply::Refused(error) => return Err(error),
                other => return Err(Error::Internal(format!("unexpected reply: {other:?}"))),
            }
            offset += filled as u64;
            progress(offset, total);
        }
        let filename = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let done = Request::ImageUploadDone {
            upload,
            filename,
            aliases: aliases.to_vec(),
            public,
        };
        operation_answer(
            self.connection
                .request::<Request, Reply>(&done, OPERATION_TIMEOUT)
                .await?,
        )
    }

    /// Downloads image `reference` into `target` (`image export`), checking its SHA-256
    /// against `fingerprint`; `progress(done)` is called after each piece. The file appears
    /// only once complete and verified.
    pub async fn download_image(
        &self,
        reference: &str,
        fingerprint: &str,
        target: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let partial = target.with_extension("partial");
        let local = |error: std::io::Error| Error::Local(format!("{}: {error}", partial.display()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(local)?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let request = Request::ImageDownload {
            reference: reference.to_string(),
        };
        let outcome = async {
            let answers = self.connection.request_stream(&request).await?;
            let mut body =
                crate::images::stream::Body::open(answers, SCRIPT_SILENCE_TIMEOUT).await?;
            let mut piece = Vec::new();
            let mut done = 0u64;
            while body.next_piece(&mut piece).await? {
                hasher.update(&piece);
                file.write_all(&piece).await.map_err(local)?;
                done += piece.len() as u64;
                progress(done);
            }
            Ok::<u64, Error>(done)
        }
        .await;
        let verified = outcome.and_then(|done| {
            let got = hex::encode(hasher.finish().as_ref());
            if got == fingerprint {
                Ok(done)
            } else {
                Err(Error::Transport(format!(
                    "the downloaded bytes hash to {got}, expected {fingerprint}"
                )))
            }
        });
        match verified {
            Ok(done) => {
                file.sync_all().await.map_err(local)?;
                tokio::fs::rename(&partial, target).await.map_err(local)?;
                Ok(done)
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(error)
            }
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.connection.close();
        self.endpoint.close();
    }
}

/// The client's own certificate, created on first use.
fn client_identity(config_dir: &Path) -> Result<Identity, Error> {
    let path = config_dir.join("client.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return serde_json::from_str(&text)
            .map_err(|error| Error::Local(format!("{}: {error}", path.display())));
    }
    let name = format!("starling-client-{}", std::process::id());
    let identity = starling_transport::self_signed_identity(&name)?;
    save_json(&path, &identity)?;
    Ok(identity)
}

fn load_remotes(config_dir: &Path) -> Result<Remotes, Error> {
    let path = config_dir.join("remotes.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|error| Error::Local(format!("{}: {error}", path.display()))),
        Err(_) => Ok(Remotes::default()),
    }
}

fn save_json<T: Serialize>(path: &PathBuf, value: &T) -> Result<(), Error> {
    let local = |error: std::io::Error| Error::Local(format!("{}: {error}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(local)?;
    }
    let text =
        serde_json::to_string_pretty(value).map_err(|error| Error::Internal(error.to_string()))?;
    std::fs::write(path, text).map_err(local)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(local)?;
    }
    Ok(())
}
