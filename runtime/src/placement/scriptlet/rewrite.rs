//! The compile-time rewriting that puts a size check in front of every call that can build
//! far more than it is given in one step (see the `bounds` module):
//! - the methods `X.join(...)`, `X.replace(...)` and `X.format(...)` become
//!   `_starling_join(X, ...)` and so on, which check the result's size when `X` is a string
//!   and otherwise call the method as it was;
//! - calls of `str(...)`, `repr(...)` and `fail(...)` become `_starling_str(...)` and so on,
//!   which measure the value's text first (a list that holds one big list many times is small
//!   on the heap and huge as text);
//! - `%` and `+` are replaced like `*` (`replace_binary_operators`);
//! - a product of integer literals written on one line (`8 * 1024 * 1024 * 1024`) becomes its
//!   value, so that it is not a checked call each time it runs (it cannot grow with the data).
//!
//! Such a method taken without calling it (`f = s.join`) is refused at compile time: it could
//! not be checked. The rewriting is textual, on the spans of the parsed source, and keeps every
//! newline, so errors keep the lines of the source as written.

use starlark::syntax::ast::{AstExpr, BinOp, ExprP};
use starlark::syntax::AstModule;

use super::ScriptletError;

/// The methods checked, and the built-in each call is rewritten to.
pub(crate) const METHODS: [(&str, &str); 3] = [
    ("join", "_starling_join"),
    ("replace", "_starling_replace"),
    ("format", "_starling_format"),
];

/// The global functions checked, and the built-in each call is rewritten to.
pub(crate) const FUNCTIONS: [(&str, &str); 3] = [
    ("str", "_starling_str"),
    ("repr", "_starling_repr"),
    ("fail", "_starling_fail"),
];

/// The built-in a slice is wrapped in: it checks the heap once the slice is built and
/// returns it. A call needs no wrapping: the statement check runs again when a call returns
/// into the statement. A slice is no call, and a statement can hold many.
pub(crate) const CHECKED: &str = "_starling_checked";

/// One rewrite, as byte offsets in the source.
#[derive(Debug)]
enum Edit {
    /// `OBJ.name(ARGS)` → `wrapper(OBJ, ARGS)`: the call spans `begin..end`, `OBJ` spans
    /// `begin..object_end`, the arguments `open + 1..end - 1`.
    Method {
        begin: usize,
        object_end: usize,
        open: usize,
        end: usize,
        wrapper: &'static str,
    },
    /// `name` at `begin..end` → `wrapper`.
    Rename {
        begin: usize,
        end: usize,
        wrapper: &'static str,
    },
    /// A product of integer literals at `begin..end` → its value.
    Fold {
        begin: usize,
        end: usize,
        value: i64,
    },
    /// `EXPR` at `begin..end` → `_starling_checked(EXPR)`.
    Wrap { begin: usize, end: usize },
}

impl Edit {
    fn begin(&self) -> usize {
        match self {
            Edit::Method { begin, .. }
            | Edit::Rename { begin, .. }
            | Edit::Fold { begin, .. }
            | Edit::Wrap { begin, .. } => *begin,
        }
    }

    fn end(&self) -> usize {
        match self {
            Edit::Method { end, .. }
            | Edit::Rename { end, .. }
            | Edit::Fold { end, .. }
            | Edit::Wrap { end, .. } => *end,
        }
    }
}

/// The source with the checked calls rewritten; the source itself when there are none.
pub(crate) fn guard_source(ast: &AstModule, source: &str) -> Result<String, ScriptletError> {
    let mut edits = Vec::new();
    let mut problem = None;
    ast.statement().visit_expr(|expr| {
        collect(ast, source, expr, false, &mut edits, &mut problem);
    });
    if let Some(problem) = problem {
        return Err(problem);
    }
    if edits.is_empty() {
        return Ok(source.to_string());
    }
    // Outer edits before the edits nested in them.
    edits.sort_by_key(|edit| (edit.begin(), std::cmp::Reverse(edit.end())));
    let mut out = String::with_capacity(source.len() + 32 * edits.len());
    let mut next = 0;
    // Spans that do not nest as the edits expect are refused, never sliced blindly: the
    // source is whatever a user set.
    if emit(source, 0, source.len(), &edits, &mut next, &mut out).is_none() {
        let begin = edits.get(next.saturating_sub(1)).map_or(0, Edit::begin);
        let line = source
            .get(..begin)
            .map_or(1, |before| before.matches('\n').count() + 1);
        return Err(ScriptletError::Unsupported {
            line,
            message: "this expression could not be guarded by the scriptlet's size checks; \
                      write it more simply (for example with a variable)"
                .to_string(),
        });
    }
    Ok(out)
}

fn collect(
    ast: &AstModule,
    source: &str,
    expr: &AstExpr,
    callee: bool,
    edits: &mut Vec<Edit>,
    problem: &mut Option<ScriptletError>,
) {
    match &expr.node {
        ExprP::Call(function, arguments) => {
            match &function.node {
                ExprP::Dot(object, name) => {
                    if let Some((_, wrapper)) =
                        METHODS.iter().find(|(method, _)| *method == name.node)
                    {
                        let end = expr.span.end().get() as usize;
                        let name_end = name.span.end().get() as usize;
                        let object_end = object_text_end(
                            source,
                            object.span.end().get() as usize,
                            name.span.begin().get() as usize,
                        );
                        let begin =
                            object_text_begin(source, expr.span.begin().get() as usize, object_end);
                        match (begin, open_paren(source, name_end, end)) {
                            (Some(begin), Some(open)) => edits.push(Edit::Method {
                                begin,
                                object_end,
                                open,
                                end,
                                wrapper,
                            }),
                            _ => note(ast, expr, problem, "this call cannot be checked"),
                        }
                    }
                    collect(ast, source, object, false, edits, problem);
                }
                _ => collect(ast, source, function, true, edits, problem),
            }
            for argument in &arguments.args {
                collect(ast, source, argument.expr(), false, edits, problem);
            }
        }
        ExprP::Dot(object, name) => {
            if !callee && METHODS.iter().any(|(method, _)| *method == name.node) {
                note(
                    ast,
                    expr,
                    problem,
                    &format!(
                        "`.{}` must be called where it is named in scriptlets (write `x.{}(...)`)",
                        name.node, name.node
                    ),
                );
            }
            collect(ast, source, object, false, edits, problem);
        }
        ExprP::Slice(..) => {
            wrap(ast, source, expr, edits, problem);
            expr.node
                .visit_expr(|child| collect(ast, source, child, false, edits, problem));
        }
        ExprP::Identifier(identifier) if callee => {
            if let Some((_, wrapper)) = FUNCTIONS
                .iter()
                .find(|(function, _)| *function == identifier.node.ident)
            {
                edits.push(Edit::Rename {
                    begin: expr.span.begin().get() as usize,
                    end: expr.span.end().get() as usize,
                    wrapper,
                });
            }
        }
        ExprP::Op(_, BinOp::Multiply, _) => match fold(source, expr) {
            Some(edit) => edits.push(edit),
            None => expr
                .node
                .visit_expr(|child| collect(ast, source, child, false, edits, problem)),
        },
        node => node.visit_expr(|child| collect(ast, source, child, false, edits, problem)),
    }
}

/// Wraps `expr` (a slice) in [`CHECKED`], its text taking in the brackets that open
/// before its span (`(a + b)[1:]`).
fn wrap(
    ast: &AstModule,
    source: &str,
    expr: &AstExpr,
    edits: &mut Vec<Edit>,
    problem: &mut Option<ScriptletError>,
) {
    let end = expr.span.end().get() as usize;
    match object_text_begin(source, expr.span.begin().get() as usize, end) {
        Some(begin) => edits.push(Edit::Wrap { begin, end }),
        None => note(ast, expr, problem, "this expression cannot be checked"),
    }
}

/// The product `expr` as its value, when it is written with decimal digits, spaces and `*`
/// only (integer literals multiplied, no brackets, line breaks or comments: the value replaces
/// the text exactly) and fits in 64 bits; `None` leaves it to the checked call.
fn fold(source: &str, expr: &AstExpr) -> Option<Edit> {
    let (begin, end) = (
        expr.span.begin().get() as usize,
        expr.span.end().get() as usize,
    );
    let text = source.get(begin..end)?;
    if !text
        .bytes()
        .all(|byte| byte.is_ascii_digit() || matches!(byte, b'*' | b' ' | b'\t'))
    {
        return None;
    }
    let mut value: i64 = 1;
    for factor in text.split('*') {
        value = value.checked_mul(factor.trim().parse::<i64>().ok()?)?;
    }
    Some(Edit::Fold { begin, end, value })
}

fn note(ast: &AstModule, expr: &AstExpr, problem: &mut Option<ScriptletError>, message: &str) {
    if problem.is_none() {
        *problem = Some(ScriptletError::Unsupported {
            line: ast.file_span(expr.span).resolve_span().begin.line + 1,
            message: message.to_string(),
        });
    }
}

/// Where the object's text ends: at the `.` before the method's name (the brackets closing
/// a parenthesized object and spaces before the dot stay with the object).
fn object_text_end(source: &str, object_end: usize, name_begin: usize) -> usize {
    source
        .get(object_end..name_begin)
        .and_then(|text| text.rfind('.'))
        .map_or(object_end, |dot| object_end + dot)
}

/// Where the object's text begins. The call's span starts at the object's first token,
/// inside the brackets that open before it (`(a + b).join(x)`, `((s).join(x)).join(y)`), so
/// take in one `(` for each `)` of the object's text that closes a bracket opened before it.
/// `None` when they are not found (a comment in between).
fn object_text_begin(source: &str, begin: usize, object_text_end: usize) -> Option<usize> {
    let closing = unmatched_closing(source.get(begin..object_text_end)?);
    let mut position = begin;
    for _ in 0..closing {
        let before = source.get(..position)?.trim_end();
        if !before.ends_with('(') {
            return None;
        }
        position = before.len() - 1;
    }
    Some(position)
}

/// How many `)` of `text` close a bracket opened before it; brackets in strings and comments
/// do not count.
fn unmatched_closing(text: &str) -> usize {
    // Quotes, `#`, brackets and line breaks are ASCII, never part of a longer UTF-8 character.
    let bytes = text.as_bytes();
    let (mut open, mut unmatched, mut index) = (0usize, 0usize, 0usize);
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'#' => {
                while bytes.get(index).is_some_and(|byte| *byte != b'\n') {
                    index += 1;
                }
            }
            b'\'' | b'"' => {
                index = string_end(bytes, index, byte);
                continue;
            }
            b'(' => open += 1,
            b')' if open > 0 => open -= 1,
            b')' => unmatched += 1,
            _ => {}
        }
        index += 1;
    }
    unmatched
}

/// The index just past the string literal whose opening `quote` is at `start` (one quote or
/// three); the end of `bytes` when it does not close there.
fn string_end(bytes: &[u8], start: usize, quote: u8) -> usize {
    let triple = [quote; 3];
    let delimiter = if bytes.get(start..start + 3) == Some(&triple[..]) {
        3
    } else {
        1
    };
    let mut index = start + delimiter;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'\\' {
            index += 2;
        } else if byte == quote
            && (delimiter == 1 || bytes.get(index..index + 3) == Some(&triple[..]))
        {
            return index + delimiter;
        } else {
            index += 1;
        }
    }
    bytes.len()
}

/// The `(` that opens the arguments: the first character after the name that is not a space,
/// a line break or a comment.
fn open_paren(source: &str, from: usize, end: usize) -> Option<usize> {
    let text = source.get(from..end)?;
    let mut in_comment = false;
    for (offset, character) in text.char_indices() {
        match character {
            '\n' => in_comment = false,
            _ if in_comment => {}
            '#' => in_comment = true,
            '(' => return Some(from + offset),
            character if character.is_whitespace() || character == '\\' => {}
            _ => return None,
        }
    }
    None
}

/// Copies `source[from..to]` to `out`, rewriting the edits that start in it (`edits[*next..]`,
/// sorted), nested ones included; `None` when the edits' spans do not fit in one another.
fn emit(
    source: &str,
    from: usize,
    to: usize,
    edits: &[Edit],
    next: &mut usize,
    out: &mut String,
) -> Option<()> {
    let mut position = from;
    while let Some(edit) = edits.get(*next) {
        if edit.begin() >= to {
            break;
        }
        *next += 1;
        out.push_str(source.get(position..edit.begin())?);
        match *edit {
            Edit::Rename { end, wrapper, .. } => {
                out.push_str(wrapper);
                position = end;
            }
            Edit::Fold { end, value, .. } => {
                out.push_str(&value.to_string());
                position = end;
            }
            Edit::Wrap { begin, end } => {
                out.push_str(CHECKED);
                out.push('(');
                emit(source, begin, end, edits, next, out)?;
                out.push(')');
                position = end;
            }
            Edit::Method {
                begin,
                object_end,
                open,
                end,
                wrapper,
            } => {
                out.push_str(wrapper);
                out.push('(');
                emit(source, begin, object_end, edits, next, out)?;
                // `.name (` goes; its line breaks stay (inside the call's brackets).
                out.extend(source.get(object_end..open)?.chars().filter(|c| *c == '\n'));
                let arguments_end = end.checked_sub(1)?;
                let arguments = source.get(open.checked_add(1)?..arguments_end)?;
                if !arguments.trim().is_empty() {
                    out.push_str(", ");
                }
                emit(source, open + 1, arguments_end, edits, next, out)?;
                out.push(')');
                position = end;
            }
        }
    }
    out.push_str(source.get(position..to)?);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use starlark::syntax::Dialect;

    fn rewrite(source: &str) -> Result<String, ScriptletError> {
        let ast = AstModule::parse("t.star", source.to_string(), &Dialect::Standard).unwrap();
        guard_source(&ast, source)
    }

    /// Goal: each checked call is rewritten, nested ones too, and every line break is kept.
    #[test]
    fn calls_are_rewritten_and_lines_kept() {
        assert_eq!(
            rewrite("x = ','.join([str(a) for a in l])\n").unwrap(),
            "x = _starling_join(',', [_starling_str(a) for a in l])\n"
        );
        assert_eq!(
            rewrite("y = (a + b).replace('x', s.join(t))\n").unwrap(),
            "y = _starling_replace((a + b), 'x', _starling_join(s, t))\n"
        );
        assert_eq!(
            rewrite("z = f(\n  s\n  .format(\n    1,\n  ),\n)\nfail(repr(z))\n").unwrap(),
            "z = f(\n  _starling_format(s\n  , \n    1,\n  ),\n)\n_starling_fail(_starling_repr(z))\n"
        );
        assert_eq!(
            rewrite("w = ''.join()\n").unwrap(),
            "w = _starling_join('')\n"
        );
        assert_eq!(
            rewrite("v = ( ( a ) ).join(b)\n").unwrap(),
            "v = _starling_join(( ( a ) ), b)\n"
        );
        let untouched = "def f(x):\n    return x.upper() - len(x) - x[1] - g(x)\n";
        assert_eq!(rewrite(untouched).unwrap(), untouched);
    }

    /// Goal: slices are followed by a heap check, however they are bracketed or nested;
    /// lines are kept.
    #[test]
    fn slices_are_wrapped() {
        assert_eq!(
            rewrite("x = [s[1:], (a + b)[:2].upper(), f(\n  l[::2])]\n").unwrap(),
            "x = [_starling_checked(s[1:]), _starling_checked((a + b)[:2]).upper(), f(\n  _starling_checked(l[::2]))]\n"
        );
        assert_eq!(
            rewrite("z = [t[1:][2:] for t in l]\n").unwrap(),
            "z = [_starling_checked(_starling_checked(t[1:])[2:]) for t in l]\n"
        );
    }

    #[test]
    fn products_of_literals_become_their_value() {
        assert_eq!(
            rewrite("x = 8 * 1024 * 1024 * 1024\n").unwrap(),
            "x = 8589934592\n"
        );
        // Each product of literals alone; the rest stays for the checked call.
        assert_eq!(
            rewrite("x = (2 * 3) * y + 4 *\\\n 5\n").unwrap(),
            "x = (6) * y + 4 *\\\n 5\n"
        );
        // Past 64 bits, or written otherwise than in decimal: left as written.
        assert_eq!(
            rewrite("x = 4294967296 * 4294967296 * 2\ny = 0x10 * 2\n").unwrap(),
            "x = 4294967296 * 4294967296 * 2\ny = 0x10 * 2\n"
        );
    }

    /// Goal: a checked method taken without being called is refused with its line.
    #[test]
    fn a_method_not_called_is_refused() {
        let error = rewrite("a = 1\nj = ','.join\n").unwrap_err();
        assert!(
            matches!(error, ScriptletError::Unsupported { line: 2, .. }),
            "{error:?}"
        );
    }

    /// Goal: a checked call on a checked call in brackets is rewritten whole (the outer call's
    /// text began inside the inner one's brackets, and the rewriting panicked slicing the
    /// source; found by `a_valid_scriptlet_stays_valid_once_guarded`); brackets in strings
    /// and comments do not count.
    #[test]
    fn nested_calls_in_brackets_are_rewritten_whole() {
        assert_eq!(
            rewrite("x = (((a)).replace(1, 1)).replace(1, 1)\n").unwrap(),
            "x = _starling_replace((_starling_replace(((a)), 1, 1)), 1, 1)\n"
        );
        assert_eq!(
            rewrite("y = ((a) + b).join(c)\n").unwrap(),
            "y = _starling_join(((a) + b), c)\n"
        );
        assert_eq!(
            rewrite("z = (\"(\" + ')' + \"\"\")\"\"\" # )\n ).join(c)\n").unwrap(),
            "z = _starling_join((\"(\" + ')' + \"\"\")\"\"\" # )\n ), c)\n"
        );
    }
}
