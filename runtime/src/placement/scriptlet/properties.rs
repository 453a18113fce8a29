//! Property tests of [`validate`], what `config set instances.placement.scriptlet` runs on
//! any text a user sends: it answers (accepted, or refused with a line of the source) in
//! bounded time and never panics; and the compile-time rewriting that guards `join`,
//! `replace`, `format`, `str`, `repr`, `fail`, `*` and `%` never turns a valid scriptlet
//! into one that is refused.

use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;

/// Validation must answer within this, parsing included (the top level's own bound is 1 s).
const VALIDATION_TIME_MAX: Duration = Duration::from_secs(10);

/// Pieces of Starlark, so that random source gets past the lexer into the parser, the
/// statement checks and the rewriting.
fn starlark_ish() -> impl Strategy<Value = String> {
    let piece = select(
        &[
            "def instance_placement(request, candidate_members):\n",
            "def f(x):\n",
            "    ",
            "\n",
            "x",
            "request",
            "candidate_members",
            " = ",
            "==",
            "','.join(",
            ".join(",
            ".replace(",
            ".format(",
            "str(",
            "repr(",
            "fail(",
            "set_target(",
            "range(",
            "len(",
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            ".",
            " for ",
            " in ",
            " if ",
            " else ",
            "pass",
            "return ",
            "lambda ",
            "\"a\"",
            "'{}'",
            "1",
            "10**9",
            " * ",
            " % ",
            " + ",
            "*=",
            "#",
            "\\\n",
            "load(",
            "while ",
            "None",
            "é",
        ][..],
    );
    vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// A valid expression over `request` and `candidate_members`, using every call and
/// operator the rewriting touches, written in the layouts it must handle (parentheses
/// around the object; inside brackets, line breaks and comments between the object and the
/// call).
fn expression() -> impl Strategy<Value = String> {
    let leaf = select(&["1", "\"a\"", "request", "candidate_members", "[]", "None"][..])
        .prop_map(str::to_string);
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| format!("str({e})")),
            inner.clone().prop_map(|e| format!("repr({e})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}).join({b})")),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| format!("(( ({a}) )\n  .join( # list\n    {b}))")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("({a}).replace({b}, {c})")),
            inner.clone().prop_map(|e| format!("\"{{}}\".format({e})")),
            inner
                .clone()
                .prop_map(|e| format!("\"-\".join([str(v) for v in {e}])")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} % {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("[{a},\n {b}]")),
        ]
    })
}

/// A valid scriptlet: `instance_placement` with a few statements over those expressions.
fn valid_scriptlet() -> impl Strategy<Value = String> {
    vec(expression(), 1..4).prop_map(|expressions| {
        let mut source = String::from("def instance_placement(request, candidate_members):\n");
        for (index, expression) in expressions.iter().enumerate() {
            source.push_str(&format!("    x{index} = {expression}\n"));
            source.push_str(&format!(
                "    if x{index} == None:\n        fail(x{index})\n"
            ));
        }
        source.push_str("    return None\n");
        source
    })
}

/// Validates `source` and checks the answer: in bounded time, and a refusal's line (when
/// it has one) is a line of the source.
fn check_validation(source: &str) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let result = validate(source);
    let elapsed = started.elapsed();
    prop_assert!(elapsed < VALIDATION_TIME_MAX, "{:?} to validate", elapsed);
    let line = match &result {
        Ok(()) => None,
        Err(ScriptletError::Syntax { line, .. } | ScriptletError::Unsupported { line, .. }) => {
            Some(*line)
        }
        Err(ScriptletError::Compile { line, .. }) => *line,
        Err(_) => None,
    };
    if let Some(line) = line {
        let lines = source.lines().count().max(1);
        prop_assert!(
            (1..=lines + 1).contains(&line),
            "line {} of {}: {:?}",
            line,
            lines,
            result
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Goal: any text is accepted or refused, in bounded time, without a panic.
    #[test]
    fn any_text_is_validated(source in ".{0,160}") {
        check_validation(&source)?;
    }

    /// Goal: as above, on text made of Starlark's pieces (which reaches the rewriting).
    #[test]
    fn starlark_like_text_is_validated(source in starlark_ish()) {
        check_validation(&source)?;
    }

    /// Goal: the guards put in at compile time keep a valid scriptlet valid, whatever the
    /// layout of its calls. Method: generated scriptlets with nested guarded calls.
    #[test]
    fn a_valid_scriptlet_stays_valid_once_guarded(source in valid_scriptlet()) {
        let result = validate(&source);
        prop_assert!(result.is_ok(), "{:?}\n{}", result, source);
    }
}
