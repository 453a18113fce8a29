//! Tests of the Rust `string.find`, `string.match`, `string.gmatch` and
//! `string.gsub`: compatibility with Lua 5.4's C implementation (which runs in
//! a plain, unsandboxed `mlua::Lua` next to the sandbox) and the limits that
//! now stop runaway patterns.

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::{host, run_named, small_limits};
use crate::{Error, Limits};

/// Chunk name shared by both engines, so error positions compare equal.
const CHUNK_NAME: &str = "compat";

/// Lua helpers both engines run: `show` turns values into comparable text
/// (strings quoted, with bytes outside printable ASCII as `\ddd`), `pack`
/// shows a `pcall` result, `collect` shows everything a `gmatch` iterator
/// yields. One line, so error positions inside `collect` are line 1 too.
const HELPERS: &str = concat!(
    r##"local function show(v) if type(v) ~= "string" then return tostring(v) end "##,
    r##"local out = {} for i = 1, #v do local b = v:byte(i) "##,
    r##"if b >= 32 and b < 127 and b ~= 92 then out[i] = string.char(b) else out[i] = "\\" .. b end end "##,
    r##"return '"' .. table.concat(out) .. '"' end "##,
    r##"local function pack(ok, ...) local parts = {tostring(ok)} "##,
    r##"for i = 1, select("#", ...) do parts[#parts + 1] = show((select(i, ...))) end "##,
    r##"return table.concat(parts, " ") end "##,
    r##"local function collect(iterator) local parts = {} "##,
    r##"for _ = 1, 1000 do local values = table.pack(iterator()) if values[1] == nil then break end "##,
    r##"for i = 1, values.n do parts[#parts + 1] = show(values[i]) end parts[#parts + 1] = ";" end "##,
    r##"return table.concat(parts, " ") end "##,
);

/// Hand-written cases: a Lua expression and what `pcall` of it gives in Lua
/// 5.4, shown by `pack`. Errors carry `compat:1:`, the position of the case.
#[rustfmt::skip]
const CASES: &[(&str, &str)] = &[
    // string.find
    (r#"string.find("hello world", "wor")"#, "true 7 9"),
    (r#"string.find("hello", "l")"#, "true 3 3"),
    (r#"string.find("hello", "xyz")"#, "true nil"),
    (r#"string.find("hello", "l", -2)"#, "true 4 4"),
    (r#"string.find("hello", "h", -100)"#, "true 1 1"),
    (r#"string.find("hello", "l", -1)"#, "true nil"),
    (r#"string.find("hello", "", 10)"#, "true nil"),
    (r#"string.find("hello", "", 6)"#, "true 6 5"),
    (r#"string.find("hello", "", 3)"#, "true 3 2"),
    (r#"string.find("", "")"#, "true 1 0"),
    (r#"string.find("", "", 2)"#, "true nil"),
    (r#"string.find("", "a*")"#, "true 1 0"),
    (r#"string.find("abc", "b", 0)"#, "true 2 2"),
    (r#"string.find("a.b", ".", 1, true)"#, "true 2 2"),
    (r#"string.find("a+b", "+", 1, true)"#, "true 2 2"),
    (r#"string.find("a+b", "a+")"#, "true 1 1"),
    (r#"string.find("hello", "l", 1, true)"#, "true 3 3"),
    (r#"string.find("hello", "", 1, true)"#, "true 1 0"),
    (r#"string.find("hello", "lo", -2, true)"#, "true 4 5"),
    (r#"string.find("a.b.c", ".", 3, true)"#, "true 4 4"),
    (r#"string.find("hello", "(l)(l)")"#, r#"true 3 4 "l" "l""#),
    (r#"string.find("hello", "()ll()")"#, "true 3 4 3 5"),
    (r#"("hello"):find("l", 4)"#, "true 4 4"),
    (r#"string.find("hello", "^l")"#, "true nil"),
    (r#"string.find("hello", "^h")"#, "true 1 1"),
    (r#"string.find("hello", "o$")"#, "true 5 5"),
    (r#"string.find("a$b", "$b")"#, "true 2 3"),
    (r#"string.find(12345, 34)"#, "true 3 4"),
    (r#"string.find("abc", "b", "2")"#, "true 2 2"),
    (r#"string.find("abc", "b", 2.0)"#, "true 2 2"),
    (r#"string.find("(", "%(")"#, "true 1 1"),
    (r#"string.find("a\0b", "\0")"#, "true 2 2"),
    (r#"string.find("a\0b", "[\0-\1]")"#, "true 2 2"),
    (r#"string.find("THE END", "%f[\0]")"#, "true 8 7"),
    (r#"string.find("aa", "()%1")"#, "true nil"),
    // string.match
    (r#"string.match("hello 123 world", "%d+")"#, r#"true "123""#),
    (r#"string.match("key=val", "(%w+)=(%w+)")"#, r#"true "key" "val""#),
    (r#"string.match("  trim  ", "^%s*(.-)%s*$")"#, r#"true "trim""#),
    (r#"string.match("hello", ".-")"#, r#"true """#),
    (r#"string.match("hello", "l*", 3)"#, r#"true "ll""#),
    (r#"string.match("[[x]]", "%[(%b[])%]")"#, r#"true "[x]""#),
    (r#"string.match("THE (quick) fox", "%f[%a]%a+")"#, r#"true "THE""#),
    (r#"string.match("hello world", "%f[%w]%w+$")"#, r#"true "world""#),
    (r#"string.match("abc", "((a)(b))")"#, r#"true "ab" "a" "b""#),
    (r#"string.match("x = 10", "()=()")"#, "true 3 4"),
    (r#"string.match("abcabc", "(abc)%1")"#, r#"true "abc""#),
    (r#"string.match("abab", "(ab)%1")"#, r#"true "ab""#),
    (r#"string.match("a,b,,c", "([^,]*),([^,]*),([^,]*)")"#, r#"true "a" "b" """#),
    (r#"string.match("2024-01-15", "(%d+)-(%d+)-(%d+)")"#, r#"true "2024" "01" "15""#),
    (r#"string.match("hello", "h?e")"#, r#"true "he""#),
    (r#"string.match("ello", "h?e")"#, r#"true "e""#),
    (r#"string.match("aaa", "a-b")"#, "true nil"),
    (r#"string.match("aaab", "a-b")"#, r#"true "aaab""#),
    (r#"string.match("]", "[]]")"#, r#"true "]""#),
    (r#"string.match("^", "[%^]")"#, r#"true "^""#),
    (r#"string.match("a^", "[a^]+")"#, r#"true "a^""#),
    (r#"string.match("x-y", "[%w-]+")"#, r#"true "x-y""#),
    (r#"string.match("f", "[a-f]")"#, r#"true "f""#),
    (r#"string.match("-", "[a-]")"#, r#"true "-""#),
    (r#"string.match("-", "[%a-z]")"#, r#"true "-""#),
    (r#"string.match("a-z", "[a%-z]+")"#, r#"true "a-z""#),
    (r#"string.match("hello", "[^aeiou]+")"#, r#"true "h""#),
    (r#"string.match("z", "%z")"#, "true nil"),
    (r#"string.match("a\0b", "%Z+%z")"#, r#"true "a\0""#),
    (r#"string.match("a.b", "%.")"#, r#"true ".""#),
    (r#"string.match("ABC", "%u+")"#, r#"true "ABC""#),
    (r#"string.match("abcDEF", "%U+")"#, r#"true "abc""#),
    (r#"string.match("\t\v x", "%s+")"#, r#"true "\9\11 ""#),
    (r#"string.match("x\0y", "[\0]")"#, r#"true "\0""#),
    (r#"string.match("\200\201", "[\128-\255]+")"#, r#"true "\200\201""#),
    (r#"string.match("\255", "%a")"#, "true nil"),
    (r#"string.match('say "hi" ok', '%b""')"#, r#"true ""hi"""#),
    (r#"string.match("hello", "()", 6)"#, "true 6"),
    (r#"string.match("hello", "()", 7)"#, "true nil"),
    (r#"string.match("hello", "(h)(e)(l)(l)(o)")"#, r#"true "h" "e" "l" "l" "o""#),
    // string.gmatch
    (r#"collect(string.gmatch("one two three", "%a+"))"#, r#"true ""one" ; "two" ; "three" ;""#),
    (r#"collect(string.gmatch("k1=v1, k2=v2", "(%w+)=(%w+)"))"#, r#"true ""k1" "v1" ; "k2" "v2" ;""#),
    (r#"collect(string.gmatch("abc", ""))"#, r#"true """ ; "" ; "" ; "" ;""#),
    (r#"collect(string.gmatch("abc", "a*"))"#, r#"true ""a" ; "" ; "" ;""#),
    (r#"collect(string.gmatch("hello", "l", 4))"#, r#"true ""l" ;""#),
    (r#"collect(string.gmatch("^a^a", "^a"))"#, r#"true ""^a" ; "^a" ;""#),
    (r#"collect(string.gmatch("abc", "()"))"#, r#"true "1 ; 2 ; 3 ; 4 ;""#),
    (r#"collect(string.gmatch("abc", ".", 10))"#, r#"true """#),
    (r#"collect(string.gmatch("abc", ".", -1))"#, r#"true ""c" ;""#),
    (r#"collect(("a,b"):gmatch("[^,]+"))"#, r#"true ""a" ; "b" ;""#),
    // string.gsub
    (r#"string.gsub("hello world", "o", "0")"#, r#"true "hell0 w0rld" 2"#),
    (r#"string.gsub("hello world", "(%w+)", "<%1>")"#, r#"true "<hello> <world>" 2"#),
    (r#"string.gsub("hello world", "%w+", "%0 %0", 1)"#, r#"true "hello hello world" 1"#),
    (r#"string.gsub("abc", "", "-")"#, r#"true "-a-b-c-" 4"#),
    (r#"string.gsub("hello world", "(%w+) (%w+)", "%2 %1")"#, r#"true "world hello" 1"#),
    (r#"string.gsub("$name is $age", "%$(%w+)", {name = "Bob", age = 42})"#, r#"true "Bob is 42" 2"#),
    (r#"string.gsub("$x $y", "%$(%w+)", {x = "1"})"#, r#"true "1 $y" 2"#),
    (r#"string.gsub("abc", "%w", function(c) return c:upper() .. "." end)"#, r#"true "A.B.C." 3"#),
    (r#"string.gsub("abc", "%w", function(c) if c == "b" then return false end return "x" end)"#, r#"true "xbx" 3"#),
    (r#"string.gsub("k=v", "(%w)=(%w)", function(a, b) return b .. "=" .. a end)"#, r#"true "v=k" 1"#),
    (r#"string.gsub("abc", "b", "%%")"#, r#"true "a%c" 1"#),
    (r#"string.gsub("abc", "b", "%1")"#, r#"true "abc" 1"#),
    (r#"string.gsub("hello", "", "x", 2)"#, r#"true "xhxello" 2"#),
    (r#"string.gsub("hello", "l", "L", -1)"#, r#"true "hello" 0"#),
    (r#"string.gsub("abc", "b", "x", 0)"#, r#"true "abc" 0"#),
    (r#"string.gsub("hello", "^h", "H")"#, r#"true "Hello" 1"#),
    (r#"string.gsub("hhh", "^h", "H")"#, r#"true "Hhh" 1"#),
    (r#"string.gsub("", "^", "x")"#, r#"true "x" 1"#),
    (r#"string.gsub("abc", "x*", "-")"#, r#"true "-a-b-c-" 4"#),
    (r#"string.gsub("abc", "b*", "-")"#, r#"true "-a-c-" 3"#),
    (r#"string.gsub("abc", "()", "%1")"#, r#"true "1a2b3c4" 4"#),
    (r#"string.gsub("ab", "()", {[1] = "<", [3] = ">"})"#, r#"true "<ab>" 3"#),
    (r#"string.gsub("abc", "b", 5)"#, r#"true "a5c" 1"#),
    (r#"string.gsub("abc", "b", 1.5)"#, r#"true "a1.5c" 1"#),
    (r#"string.gsub("abc", ".", {a = 1.0})"#, r#"true "1.0bc" 3"#),
    (r#"string.gsub(123, "2", "x")"#, r#"true "1x3" 1"#),
    (r#"string.gsub(123, "4", "x")"#, r#"true "123" 0"#),
    (r#"string.gsub(1.5, "%d", {})"#, r#"true "1.5" 2"#),
    (r#"string.gsub("abc", "(", "x")"#, r#"true "xaxbxcx" 4"#),
    (r#"string.gsub("a\0b", "%z", "Z")"#, r#"true "aZb" 1"#),
    (r#"("x"):rep(3):gsub("x", "y")"#, r#"true "yyy" 3"#),
    (
        r#"(function() local ok, e = pcall(string.gsub, "abc", "b", function() error({code = 7}) end) return ok, e.code end)()"#,
        "true false 7",
    ),
    // Errors, with Lua's messages and the caller's position.
    (r#"string.find("a", "%")"#, r#"false "compat:1: malformed pattern (ends with '%')""#),
    (r#"string.find("a", "[a")"#, r#"false "compat:1: malformed pattern (missing ']')""#),
    (r#"string.find("abc", "[a-")"#, r#"false "compat:1: malformed pattern (missing ']')""#),
    (r#"string.find("a]", "[]")"#, r#"false "compat:1: malformed pattern (missing ']')""#),
    (r#"string.find("a", "%b")"#, r#"false "compat:1: malformed pattern (missing arguments to '%b')""#),
    (r#"string.find("a", "%fa")"#, r#"false "compat:1: missing '[' after '%f' in pattern""#),
    (r#"string.find("a", "a)")"#, "true nil"),
    (r#"string.match("a", "a)")"#, r#"false "compat:1: invalid pattern capture""#),
    (r#"string.find("a", "%1")"#, r#"false "compat:1: invalid capture index %1""#),
    (r#"string.match("a", "%0")"#, r#"false "compat:1: invalid capture index %0""#),
    (r#"string.match("abc", "(")"#, r#"false "compat:1: unfinished capture""#),
    (r#"string.find("a", "b[")"#, "true nil"),
    (r#"string.find("a", "a[")"#, r#"false "compat:1: malformed pattern (missing ']')""#),
    (r#"string.find("a", string.rep("()", 33))"#, r#"false "compat:1: too many captures""#),
    (r#"string.find(string.rep("a", 200), string.rep("a?", 200))"#, r#"false "compat:1: pattern too complex""#),
    (r#"string.find(string.rep("a", 200), string.rep("a?", 199))"#, "true 1 199"),
    (r#"collect(string.gmatch("abc", "("))"#, r#"false "compat:1: unfinished capture""#),
    (r#"string.gsub("abc", "b", "%")"#, r#"false "compat:1: invalid use of '%' in replacement string""#),
    (r#"string.gsub("abc", "b", "%x")"#, r#"false "compat:1: invalid use of '%' in replacement string""#),
    (r#"string.gsub("abc", "b", "%2")"#, r#"false "compat:1: invalid capture index %2""#),
    (r#"string.gsub("abc", "(b)", "%2")"#, r#"false "compat:1: invalid capture index %2""#),
    (r#"string.gsub("abc", "(", "%1")"#, r#"false "compat:1: unfinished capture""#),
    (r#"string.gsub("abc", "%w", {a = 1, b = true})"#, r#"false "compat:1: invalid replacement value (a boolean)""#),
    (r#"string.gsub("abc", "%w", function() return {} end)"#, r#"false "compat:1: invalid replacement value (a table)""#),
    (r#"string.gsub("abc", "b", function() error("boom") end)"#, r#"false "compat:1: boom""#),
    (r#"string.gsub("abc", "b")"#, r#"false "compat:1: bad argument #3 to 'gsub' (string/function/table expected, got no value)""#),
    (r#"string.gsub("abc", "b", "x", 1.5)"#, r#"false "compat:1: bad argument #4 to 'gsub' (number has no integer representation)""#),
    (r#"string.find(nil, "x")"#, r#"false "compat:1: bad argument #1 to 'find' (string expected, got nil)""#),
    (r#"string.find("abc", "b", "x")"#, r#"false "compat:1: bad argument #3 to 'find' (number expected, got string)""#),
    (r#"string.find("abc", "b", 1.5)"#, r#"false "compat:1: bad argument #3 to 'find' (number has no integer representation)""#),
    (r#"string.match("abc", {})"#, r#"false "compat:1: bad argument #2 to 'match' (string expected, got table)""#),
    (r#"("abc"):gsub("b")"#, r#"false "compat:1: bad argument #2 to 'gsub' (string/function/table expected, got no value)""#),
    (r#"("abc"):find({})"#, r#"false "compat:1: bad argument #1 to 'find' (string expected, got table)""#),
    (r#"({find = string.find}):find("x")"#, r#"false "compat:1: calling 'find' on bad self (string expected, got table)""#),
    (r#"select(2, pcall(string.find, "a", "%"))"#, "true \"malformed pattern (ends with '%')\""),
];

/// Builds a chunk that runs each case under `pcall` and returns what `pack`
/// shows for it. The cases share line 1 with the helpers.
fn chunk_for_cases(expressions: &[&str]) -> String {
    let functions: Vec<String> = expressions
        .iter()
        .map(|expression| format!("function() return {expression} end"))
        .collect();
    format!(
        "{HELPERS} local CASES = {{{}}}\nlocal results = {{}}\n\
         for i, case in ipairs(CASES) do results[i] = pack(pcall(case)) end\nreturn results",
        functions.join(", ")
    )
}

/// Runs `source` with the C string library in a plain Lua state.
fn run_in_c_lua(source: &str) -> Vec<String> {
    let lua = mlua::Lua::new();
    lua.load(source)
        .set_name(format!("={CHUNK_NAME}"))
        .eval::<Vec<String>>()
        .unwrap_or_else(|err| panic!("reference Lua failed: {err}"))
}

/// Runs `source` in the sandbox, with the Rust string functions.
async fn run_in_sandbox(source: &str) -> Vec<String> {
    let limits = Limits {
        instructions: u64::MAX,
        wall_clock: Duration::from_secs(120),
        ..small_limits()
    };
    let result = run_named(host(), source, limits, CHUNK_NAME).await.0;
    let Ok(Json::Array(items)) = result else {
        panic!("sandbox run failed: {result:?}");
    };
    items
        .into_iter()
        .map(|item| item.as_str().unwrap_or("<not a string>").to_string())
        .collect()
}

/// Goal: the Rust string functions give what Lua 5.4 documents, and so does
/// C Lua (which checks the expectations themselves). Method: each
/// hand-written case runs in both engines; both must print the expected text.
#[tokio::test]
async fn cases_give_lua_results() {
    tracing::info!("--- {} hand-written cases", CASES.len());
    let expressions: Vec<&str> = CASES.iter().map(|(expression, _)| *expression).collect();
    let source = chunk_for_cases(&expressions);
    let reference = run_in_c_lua(&source);
    let sandbox = run_in_sandbox(&source).await;
    let mut failures = Vec::new();
    for (index, (expression, expected)) in CASES.iter().enumerate() {
        let c_result = reference.get(index).map_or("<missing>", String::as_str);
        let rust_result = sandbox.get(index).map_or("<missing>", String::as_str);
        if c_result != *expected || rust_result != *expected {
            failures.push(format!(
                "{expression}\n  expected {expected}\n  C Lua    {c_result}\n  Rust     {rust_result}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A small deterministic pseudo-random generator (xorshift64*), so the
/// generated cases are the same on every run.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        usize::try_from(value).unwrap_or(0) % bound
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Pattern pieces the generator combines, malformed ones included.
#[rustfmt::skip]
const ATOMS: &[&str] = &[
    "a", "b", ".", "%a", "%d", "%s", "%W", "[ab]", "[^a]", "[a-c]", "%(", "(", ")", "()", "%1",
    "%2", "%bab", "%b()", "%f[a]", "%f[^a]", "%f[%s]", "^", "$", "[", "%", "]", "-", "[]]", "%]",
    "%-", "[%a-]", "%z", "\\0",
];
const QUANTIFIERS: &[&str] = &["", "", "*", "+", "-", "?"];
const SUBJECT_BYTES: &[&str] = &["a", "a", "b", "b", " ", "(", ")", "1", "-", "%", "]", "\\0"];
const CALLS: &[&str] = &[
    "string.find(s, p, i)",
    "string.find(s, p, i, true)",
    "string.match(s, p, i)",
    "collect(string.gmatch(s, p, i))",
    "string.gsub(s, p, \"<%0>\")",
    "string.gsub(s, p, \"%1\", 2)",
    "string.gsub(s, p, function(...) return table.concat({...}, \"|\") end)",
    "string.gsub(s, p, {a = \"A\", [\"\"] = false})",
];

fn random_case(random: &mut Random) -> String {
    let pattern: String = (0..1 + random.below(5))
        .map(|_| format!("{}{}", random.pick(ATOMS), random.pick(QUANTIFIERS)))
        .collect();
    let subject: String = (0..random.below(10))
        .map(|_| random.pick(SUBJECT_BYTES))
        .collect();
    let init = i64::try_from(random.below(25)).unwrap_or(0) - 12;
    let call = random.pick(CALLS);
    format!("(function(s, p, i) return {call} end)(\"{subject}\", \"{pattern}\", {init})")
}

/// Goal: the Rust matcher agrees with Lua's C matcher beyond the cases we
/// thought of, errors included. Method: 10 000 generated calls (random
/// patterns from valid and malformed pieces, subjects, start positions and
/// replacement kinds) run in both engines and must print the same.
#[tokio::test]
async fn generated_cases_agree_with_c_lua() {
    let mut random = Random(0x5EED_1234_ABCD_0042);
    let cases: Vec<String> = (0..10_000).map(|_| random_case(&mut random)).collect();
    for (batch_number, batch) in cases.chunks(500).enumerate() {
        tracing::info!("--- batch {batch_number}");
        let expressions: Vec<&str> = batch.iter().map(String::as_str).collect();
        let source = chunk_for_cases(&expressions);
        let reference = run_in_c_lua(&source);
        let sandbox = run_in_sandbox(&source).await;
        assert_eq!(reference.len(), batch.len());
        let failures: Vec<String> = batch
            .iter()
            .zip(reference.iter().zip(&sandbox))
            .filter(|(_, (c_result, rust_result))| c_result != rust_result)
            .map(|(case, (c_result, rust_result))| {
                format!("{case}\n  C Lua {c_result}\n  Rust  {rust_result}")
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// Limits for the runaway tests: a short deadline and no instruction budget.
fn short_deadline() -> Limits {
    Limits {
        wall_clock: Duration::from_millis(200),
        instructions: u64::MAX,
        ..small_limits()
    }
}

/// Scripts whose pattern matching would run for minutes or more in C.
const RUNAWAYS: &[&str] = &[
    r#"return string.find(string.rep("a", 300000), ".-.-.-.-b")"#,
    r#"return string.match(string.rep("a", 300000), "(.-)%1b")"#,
    r#"return (string.rep("a", 300000):gsub(".-.-b", "x"))"#,
    r#"for w in string.gmatch(string.rep("a", 300000), ".-.-b") do end"#,
    r#"return string.find(string.rep("a", 300000), "a*a*a*a*b")"#,
    r#"return string.find(string.rep("a", 1000000), string.rep("a", 500000) .. "b", 1, true)"#,
    r#"return pcall(string.find, string.rep("a", 300000), ".-.-.-.-b")"#,
    r#"local ok = pcall(string.gsub, string.rep("a", 300000), ".-.-b", "x") return "escaped""#,
    r#"while true do pcall(string.match, string.rep("a", 300000), "(.-)%1b") end"#,
    r#"return coroutine.resume(coroutine.create(function() return string.find(string.rep("a", 300000), ".-.-.-b") end))"#,
];

/// Goal: a pattern that would run for minutes is stopped by the wall-clock
/// limit, and `pcall` or a coroutine cannot swallow the timeout. Method:
/// each runaway script runs with a 200 ms deadline; it must end with
/// `Error::Timeout` well within 5 s.
#[tokio::test]
async fn runaway_patterns_stop_at_the_deadline() {
    for source in RUNAWAYS {
        tracing::info!("--- {source}");
        let started = Instant::now();
        let result = run_named(host(), source, short_deadline(), "script.lua")
            .await
            .0;
        let elapsed = started.elapsed();
        assert_eq!(result, Err(Error::Timeout { seconds: 0.2 }), "{source}");
        assert!(
            elapsed < Duration::from_secs(5),
            "{source} took {elapsed:?}"
        );
    }
}

/// Goal: pattern matching counts against the instruction budget too. Method:
/// a runaway pattern under a budget of one million and a long deadline must
/// end with `Error::InstructionLimit`, also inside `pcall`.
#[tokio::test]
async fn pattern_steps_count_against_the_instruction_budget() {
    let scripts = [
        r#"return string.find(string.rep("a", 300000), ".-.-.-.-b")"#,
        r#"pcall(string.gsub, string.rep("a", 300000), "(.-)%1b", "") return "escaped""#,
    ];
    for source in scripts {
        let started = Instant::now();
        let result = run_named(host(), source, small_limits(), "script.lua")
            .await
            .0;
        assert_eq!(
            result,
            Err(Error::InstructionLimit {
                instructions: 1_000_000
            }),
            "{source}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{source}");
    }
}

/// Goal: `gsub` cannot build a result larger than the memory limit outside
/// Lua's allocator. Method: replacements that would expand 1 000 bytes into
/// about 100 MB, against a 16 MiB limit, must end with `Error::MemoryLimit`,
/// also inside `pcall`.
#[tokio::test]
async fn gsub_output_is_bounded_by_the_memory_limit() {
    let scripts = [
        r#"return string.gsub(string.rep("a", 1000), "", string.rep("b", 100000))"#,
        r#"return string.gsub(string.rep("a", 100000), ".", string.rep("%0", 1000))"#,
        r#"pcall(string.gsub, string.rep("a", 1000), "a", function() return string.rep("b", 100000) end) return "escaped""#,
    ];
    // Copying counts against the instruction budget, so give it room here.
    let limits = Limits {
        instructions: 100_000_000,
        ..small_limits()
    };
    for source in scripts {
        let result = run_named(host(), source, limits, "script.lua").await.0;
        assert_eq!(
            result,
            Err(Error::MemoryLimit {
                bytes: 16 * 1024 * 1024
            }),
            "{source}"
        );
    }
}
