//! The interactive REPL: a local Lua session whose built-ins run on a member.
//!
//! With a terminal it uses reedline (history, multi-line input for unfinished statements,
//! completion of built-in names); without one (pipes, scripts, tests) it reads plain lines.
//! Lists of records print as tables (`:format json|yaml|table` switches); Ctrl-C while a
//! chunk runs stops the chunk, not the REPL.

use std::borrow::Cow;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use reedline::{
    default_emacs_keybindings, ColumnarMenu, Completer, CompletionResult, Emacs, FileBackedHistory,
    KeyCode, KeyModifiers, MenuBuilder, Prompt, PromptEditMode, PromptHistorySearch, Reedline,
    ReedlineEvent, ReedlineMenu, Signal, Span, Suggestion, ValidationResult, Validator,
};
use serde_json::Value;
use starling_runtime::{Client, Operation, BUILTINS};
use starling_stdlib::{Host, Limits, Session};

use crate::format::{self, Format};

/// Name of the menu that Tab opens.
const COMPLETION_MENU: &str = "completion_menu";

/// Script built-ins that send each call to the member as an operation.
struct RemoteHost {
    client: Arc<Client>,
    /// `log.*` lines, in order, for the member (see [`forward_logs`]).
    logs: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

/// Writes the REPL's `log.*` lines on the member, in order: the chunk runs here, but its log
/// lines belong in the member's log and logging events, as a script's run there do.
async fn forward_logs(
    client: Arc<Client>,
    mut logs: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some((level, line)) = logs.recv().await {
        let args = [level, line];
        let written = client
            .exec_with_args("log[arg[1]](arg[2])", "repl", &args, |_| {})
            .await;
        if let Err(error) = written {
            tracing::debug!(%error, "a log line of the REPL did not reach the member");
        }
    }
}

impl Host for RemoteHost {
    fn call(
        &self,
        name: &str,
        args: Vec<Value>,
    ) -> futures::future::BoxFuture<'static, Result<Value, String>> {
        let client = self.client.clone();
        let operation = Operation::from_call(name, &args);
        Box::pin(async move {
            let operation = operation.map_err(|error| error.to_string())?;
            client
                .operation(operation)
                .await
                .map_err(|error| error.to_string())
        })
    }

    fn log(&self, level: &str, line: &str) {
        let _ = self.logs.send((level.to_string(), line.to_string()));
    }
}

/// Runs the REPL until end of input or `exit`.
pub async fn run(client: Client, history: PathBuf) -> Result<()> {
    let (print, mut printed) = tokio::sync::mpsc::channel(64);
    let client = Arc::new(client);
    let (logs, to_forward) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(forward_logs(client.clone(), to_forward));
    let host: Arc<dyn Host> = Arc::new(RemoteHost { client, logs });
    let limits = Limits {
        wall_clock: std::time::Duration::from_secs(3600),
        ..Limits::default()
    };
    let mut session = Session::new(host, BUILTINS, limits, print)?;
    let mut lines = Lines::new(history)?;
    // At the prompt the line editor reads Ctrl-C as a key; while a chunk runs, the terminal
    // turns it into SIGINT, which stops the chunk, not the REPL.
    if matches!(lines, Lines::Editor(_)) {
        let interrupter = session.interrupter();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                interrupter.interrupt();
            }
        });
    }
    let mut format = Format::Table;
    while let Some(input) = lines.next().await? {
        let input = input.trim();
        if input.is_empty() {
            continue;
        }
        if input == "exit" || input == "quit" {
            break;
        }
        if let Some(name) = input.strip_prefix(":format") {
            match name.trim() {
                "table" => format = Format::Table,
                "json" => format = Format::Json,
                "yaml" => format = Format::Yaml,
                other => eprintln!("error: :format takes table, json or yaml, not \"{other}\""),
            }
            continue;
        }
        // Print lines as the chunk prints them: the channel is bounded, so the chunk waits for us.
        let result = {
            let eval = session.eval(input);
            tokio::pin!(eval);
            loop {
                tokio::select! {
                    biased;
                    result = &mut eval => break result,
                    Some(line) = printed.recv() => println!("{line}"),
                }
            }
        };
        while let Ok(line) = printed.try_recv() {
            println!("{line}");
        }
        match result {
            Ok(Value::Null) => {}
            Ok(value) => println!("{}", format::render_auto(&value, format)),
            Err(error) => eprintln!("error: {error}"),
        }
    }
    Ok(())
}

/// Where input comes from: the line editor or plain standard input.
enum Lines {
    Editor(Box<Reedline>),
    Plain,
}

impl Lines {
    fn new(history: PathBuf) -> Result<Lines> {
        if !std::io::stdin().is_terminal() {
            return Ok(Lines::Plain);
        }
        let history = FileBackedHistory::with_file(1000, history)?;
        // Tab opens the completion menu of built-in names, as shells do.
        let mut keybindings = default_emacs_keybindings();
        keybindings.add_binding(
            KeyModifiers::NONE,
            KeyCode::Tab,
            ReedlineEvent::UntilFound(vec![
                ReedlineEvent::Menu(COMPLETION_MENU.to_string()),
                ReedlineEvent::MenuNext,
            ]),
        );
        let menu = ColumnarMenu::default().with_name(COMPLETION_MENU);
        let editor = Reedline::create()
            .with_history(Box::new(history))
            .with_validator(Box::new(LuaValidator))
            .with_completer(Box::new(BuiltinCompleter))
            .with_menu(ReedlineMenu::EngineCompleter(Box::new(menu)))
            .with_edit_mode(Box::new(Emacs::new(keybindings)));
        Ok(Lines::Editor(Box::new(editor)))
    }

    async fn next(&mut self) -> Result<Option<String>> {
        match self {
            Lines::Editor(editor) => {
                let editor: &mut Reedline = editor;
                // reedline blocks; it runs on this thread between evaluations.
                match tokio::task::block_in_place(|| editor.read_line(&StarlingPrompt))? {
                    Signal::Success(line) => Ok(Some(line)),
                    Signal::CtrlC => Ok(Some(String::new())),
                    Signal::CtrlD => Ok(None),
                    _ => Ok(Some(String::new())),
                }
            }
            Lines::Plain => read_plain_statement().await,
        }
    }
}

/// Reads lines from stdin until they form a complete statement.
async fn read_plain_statement() -> Result<Option<String>> {
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        let mut statement = String::new();
        for line in stdin.lock().lines() {
            let line = line?;
            statement.push_str(&line);
            statement.push('\n');
            if !starling_stdlib::is_incomplete(&statement) {
                return Ok(Some(statement));
            }
        }
        Ok(if statement.trim().is_empty() {
            None
        } else {
            Some(statement)
        })
    })
    .await?
}

struct LuaValidator;

impl Validator for LuaValidator {
    fn validate(&self, line: &str) -> ValidationResult {
        if starling_stdlib::is_incomplete(line) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Complete
        }
    }
}

struct BuiltinCompleter;

impl Completer for BuiltinCompleter {
    fn complete(&mut self, line: &str, position: usize) -> CompletionResult {
        CompletionResult::fresh(builtin_suggestions(line, position))
    }
}

fn builtin_suggestions(line: &str, position: usize) -> Vec<Suggestion> {
    {
        let before = &line[..position.min(line.len())];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '.' || c == '_'))
            .map_or(0, |index| index + 1);
        let word = &before[start..];
        if word.is_empty() {
            return Vec::new();
        }
        BUILTINS
            .iter()
            .filter(|builtin| builtin.name.starts_with(word))
            .map(|builtin| Suggestion {
                value: builtin.name.to_string(),
                description: Some(builtin.help.to_string()),
                span: Span::new(start, position),
                append_whitespace: false,
                ..Suggestion::default()
            })
            .collect()
    }
}

struct StarlingPrompt;

impl Prompt for StarlingPrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Borrowed("starling")
    }
    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn render_prompt_indicator(&self, _mode: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed("> ")
    }
    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("… ")
    }
    fn render_prompt_history_search_indicator(&self, _search: PromptHistorySearch) -> Cow<'_, str> {
        Cow::Borrowed("(search) ")
    }
}
