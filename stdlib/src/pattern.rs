//! Lua 5.4 pattern matching (reference manual §6.4.1), written in Rust so that
//! the guard can stop it: Lua's own matcher runs in C, where the instruction
//! hook never fires, so `string.find(string.rep("a", 300000), ".-.-.-.-b")`
//! could run for hours.
//!
//! The matcher follows Lua's semantics item by item, including its laziness (a
//! malformed tail of a pattern is only reported once matching reaches it), its
//! limits (32 captures, a recursion depth of 200 that fails with "pattern too
//! complex") and its error messages. It works on bytes, not UTF-8.
//!
//! Every step (one pattern item tried at one subject position, one subject byte
//! scanned by `%b`, or [`BULK_BYTES_PER_STEP`] bytes compared or copied in bulk)
//! is charged to a [`Budget`], which reports to the guard in batches; when the
//! guard says a limit has tripped, matching stops with [`Stop::Limit`].
//!
//! Start with [`find`] (used by `string.find` and `string.match`), [`Iteration`]
//! (`string.gmatch`) and [`substitute`] (`string.gsub`); `strings` binds them to Lua.

use crate::guard::Fatal;

/// Most captures one pattern may have (Lua's `LUA_MAXCAPTURES`).
pub(crate) const MAX_CAPTURES: usize = 32;

/// Deepest recursion of the matcher (Lua's `MAXCCALLS`): deeper patterns fail
/// with "pattern too complex", as they do in Lua.
const MAX_DEPTH: usize = 200;

/// Bytes compared or copied in one go that count as one step.
pub(crate) const BULK_BYTES_PER_STEP: usize = 16;

/// Lua's escape character in patterns and replacement strings.
const ESCAPE: u8 = b'%';

/// Bytes that make a pattern more than a plain substring (Lua's `SPECIALS`).
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Why matching ended without an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stop {
    /// The pattern or replacement string is invalid; the message is Lua's.
    Invalid(String),
    /// The guard reported a tripped limit.
    Limit(Fatal),
}

fn invalid(message: impl Into<String>) -> Stop {
    Stop::Invalid(message.into())
}

/// Counts match steps and reports them to the guard every `interval` steps.
pub(crate) struct Budget<'g> {
    /// Steps taken since the last report.
    unreported: u64,
    /// Steps between two reports.
    interval: u64,
    /// Charges steps to the guard; returns the tripped limit, if any.
    report: &'g (dyn Fn(u64) -> Option<Fatal> + 'g),
}

impl<'g> Budget<'g> {
    /// A budget that calls `report` with the steps taken every `interval` steps.
    pub(crate) fn new(interval: u64, report: &'g (dyn Fn(u64) -> Option<Fatal> + 'g)) -> Self {
        Budget {
            unreported: 0,
            interval: interval.max(1),
            report,
        }
    }

    /// Charges `steps`, reporting to the guard when a batch is complete.
    pub(crate) fn charge(&mut self, steps: u64) -> Result<(), Stop> {
        self.unreported = self.unreported.saturating_add(steps);
        if self.unreported >= self.interval {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Charges the work of comparing or copying `bytes` bytes.
    pub(crate) fn charge_bytes(&mut self, bytes: usize) -> Result<(), Stop> {
        let steps = bytes / BULK_BYTES_PER_STEP + 1;
        self.charge(u64::try_from(steps).unwrap_or(u64::MAX))
    }

    /// Reports the steps not reported yet; call it when a string function ends.
    pub(crate) fn flush(&mut self) -> Result<(), Stop> {
        let steps = std::mem::take(&mut self.unreported);
        match (self.report)(steps) {
            Some(fatal) => Err(Stop::Limit(fatal)),
            None => Ok(()),
        }
    }
}

/// The value of one capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capture {
    /// A substring: the subject's bytes `start..end`.
    Text {
        /// First byte, 0-based.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// A position capture `()`: a 1-based subject position.
    Position(usize),
}

/// How far a capture has got while matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// Opened by `(` but not closed yet.
    Open,
    /// A position capture `()`.
    Position,
    /// Closed, with this many bytes.
    Closed(usize),
}

/// One successful match: where it is and the state of its captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Match {
    /// First byte of the match, 0-based.
    pub(crate) start: usize,
    /// One past the last byte of the match.
    pub(crate) end: usize,
    /// Start and extent of each capture the pattern opened.
    slots: Vec<(usize, Extent)>,
}

impl Match {
    /// Capture `index` (0-based); with no captures at all, capture 0 is the
    /// whole match, as for `%1` in `gsub` or a table replacement's key.
    pub(crate) fn capture(&self, index: usize) -> Result<Capture, Stop> {
        let Some(&(start, extent)) = self.slots.get(index) else {
            if index == 0 {
                return Ok(self.whole());
            }
            return Err(invalid(format!("invalid capture index %{}", index + 1)));
        };
        match extent {
            Extent::Open => Err(invalid("unfinished capture")),
            Extent::Position => Ok(Capture::Position(start + 1)),
            Extent::Closed(len) => Ok(Capture::Text {
                start,
                end: start + len,
            }),
        }
    }

    /// The pattern's captures, none if it has none (what `string.find` adds).
    pub(crate) fn captures(&self) -> Result<Vec<Capture>, Stop> {
        (0..self.slots.len())
            .map(|index| self.capture(index))
            .collect()
    }

    /// The pattern's captures, or the whole match if it has none (what
    /// `string.match` and `string.gmatch` return).
    pub(crate) fn captures_or_whole(&self) -> Result<Vec<Capture>, Stop> {
        if self.slots.is_empty() {
            return Ok(vec![self.whole()]);
        }
        self.captures()
    }

    fn whole(&self) -> Capture {
        Capture::Text {
            start: self.start,
            end: self.end,
        }
    }
}

/// True when `pattern` has no magic characters, so `string.find` may search
/// for it as a plain substring.
pub(crate) fn is_plain(pattern: &[u8]) -> bool {
    !pattern.iter().any(|byte| SPECIALS.contains(byte))
}

/// Finds `needle` as a plain substring of `subject` at or after byte `init`;
/// returns its 0-based start.
pub(crate) fn find_plain(
    subject: &[u8],
    needle: &[u8],
    init: usize,
    budget: &mut Budget<'_>,
) -> Result<Option<usize>, Stop> {
    let Some(last_start) = subject.len().checked_sub(needle.len()) else {
        return Ok(None);
    };
    let Some((&first, rest)) = needle.split_first() else {
        return Ok((init <= subject.len()).then_some(init));
    };
    for start in init..=last_start {
        budget.charge(1)?;
        if subject[start] == first {
            budget.charge_bytes(rest.len())?;
            if subject[start + 1..start + needle.len()] == *rest {
                return Ok(Some(start));
            }
        }
    }
    Ok(None)
}

/// Matches `pattern` against `subject` starting at byte `init` or later (only
/// at `init` when the pattern starts with the anchor `^`).
pub(crate) fn find(
    subject: &[u8],
    pattern: &[u8],
    init: usize,
    budget: &mut Budget<'_>,
) -> Result<Option<Match>, Stop> {
    let (anchored, pattern) = split_anchor(pattern);
    let mut matcher = Matcher::new(subject, pattern, budget);
    let mut start = init;
    loop {
        if let Some(end) = matcher.attempt(start)? {
            return Ok(Some(matcher.found(start, end)));
        }
        if anchored || start >= subject.len() {
            return Ok(None);
        }
        start += 1;
    }
}

/// The state of a `string.gmatch` iterator between calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Iteration {
    /// Where the next search starts.
    position: usize,
    /// End of the previous match: an empty match there is skipped.
    last_end: Option<usize>,
}

impl Iteration {
    /// Starts at byte `init` (0-based; past the end means no matches at all).
    pub(crate) fn new(init: usize) -> Self {
        Iteration {
            position: init,
            last_end: None,
        }
    }

    /// The next match of `pattern` in `subject`. As in Lua 5.4, a leading `^`
    /// is an ordinary character here, and an empty match right where the
    /// previous match ended is skipped.
    pub(crate) fn next(
        &mut self,
        subject: &[u8],
        pattern: &[u8],
        budget: &mut Budget<'_>,
    ) -> Result<Option<Match>, Stop> {
        let mut matcher = Matcher::new(subject, pattern, budget);
        let mut start = self.position;
        while start <= subject.len() {
            match matcher.attempt(start)? {
                Some(end) if Some(end) != self.last_end => {
                    self.position = end;
                    self.last_end = Some(end);
                    return Ok(Some(matcher.found(start, end)));
                }
                _ => start += 1,
            }
        }
        self.position = start;
        Ok(None)
    }
}

/// What `string.gsub` puts in place of each match.
pub(crate) trait Replace {
    /// Failures of the replacement itself (e.g. an error raised by a Lua function).
    type Error: From<Stop>;

    /// Appends the replacement for `found` to `out`; returns false when it kept
    /// the matched text unchanged.
    fn replace(
        &mut self,
        subject: &[u8],
        found: &Match,
        out: &mut Vec<u8>,
    ) -> Result<bool, Self::Error>;
}

/// A replacement string, where `%0`-`%9` stand for captures and `%%` for `%`.
pub(crate) struct Template<'t> {
    /// The replacement string as the script wrote it.
    pub(crate) text: &'t [u8],
    /// Largest output allowed; each `%n` may copy the whole subject, so the
    /// output is checked as it grows, not only between matches.
    pub(crate) max_bytes: usize,
}

impl Replace for Template<'_> {
    type Error = Stop;

    fn replace(&mut self, subject: &[u8], found: &Match, out: &mut Vec<u8>) -> Result<bool, Stop> {
        let mut rest = self.text;
        while let Some(at) = rest.iter().position(|&byte| byte == ESCAPE) {
            out.extend_from_slice(&rest[..at]);
            // Lua reads the string's terminating NUL after a trailing `%`.
            let code = rest.get(at + 1).copied().unwrap_or(0);
            match code {
                ESCAPE => out.push(ESCAPE),
                b'0' => out.extend_from_slice(&subject[found.start..found.end]),
                b'1'..=b'9' => match found.capture(usize::from(code - b'1'))? {
                    Capture::Text { start, end } => out.extend_from_slice(&subject[start..end]),
                    Capture::Position(position) => {
                        out.extend_from_slice(position.to_string().as_bytes())
                    }
                },
                _ => return Err(invalid("invalid use of '%' in replacement string")),
            }
            if out.len() > self.max_bytes {
                return Err(Stop::Limit(Fatal::Memory));
            }
            rest = rest.get(at + 2..).unwrap_or_default();
        }
        out.extend_from_slice(rest);
        Ok(true)
    }
}

/// The result of [`substitute`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Substitution {
    /// The new text, or `None` when every replacement kept the original text.
    pub(crate) text: Option<Vec<u8>>,
    /// How many matches were replaced.
    pub(crate) count: u64,
}

/// `string.gsub`: replaces up to `max_count` matches of `pattern` in `subject`
/// (every match when `None`). Fails with the memory limit as soon as the
/// output would exceed `max_bytes`.
pub(crate) fn substitute<R: Replace>(
    subject: &[u8],
    pattern: &[u8],
    max_count: Option<u64>,
    max_bytes: usize,
    budget: &mut Budget<'_>,
    replacement: &mut R,
) -> Result<Substitution, R::Error> {
    let (anchored, pattern) = split_anchor(pattern);
    let mut matcher = Matcher::new(subject, pattern, budget);
    let mut out = Vec::new();
    let mut changed = false;
    let mut count = 0;
    let mut position = 0;
    let mut last_end = None;
    while max_count.is_none_or(|max| count < max) {
        match matcher.attempt(position)? {
            Some(end) if Some(end) != last_end => {
                count += 1;
                let found = matcher.found(position, end);
                let before = out.len();
                changed |= replacement.replace(subject, &found, &mut out)?;
                matcher.budget.charge_bytes(out.len() - before)?;
                position = end;
                last_end = Some(end);
            }
            _ if position < subject.len() => {
                out.push(subject[position]);
                position += 1;
            }
            _ => break,
        }
        if out.len() > max_bytes {
            return Err(Stop::Limit(Fatal::Memory).into());
        }
        if anchored {
            break;
        }
    }
    if !changed {
        return Ok(Substitution { text: None, count });
    }
    matcher.budget.charge_bytes(subject.len() - position)?;
    out.extend_from_slice(&subject[position..]);
    if out.len() > max_bytes {
        return Err(Stop::Limit(Fatal::Memory).into());
    }
    Ok(Substitution {
        text: Some(out),
        count,
    })
}

/// Splits a leading `^` (the anchor of `find`, `match` and `gsub`) off `pattern`.
fn split_anchor(pattern: &[u8]) -> (bool, &[u8]) {
    match pattern.strip_prefix(b"^") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    }
}

/// What the matcher does after one pattern item.
enum Next {
    /// Go on matching at subject byte `subject`, pattern byte `pattern`.
    Continue { subject: usize, pattern: usize },
    /// The match attempt from here is decided: its end, or no match.
    Done(Option<usize>),
}

/// Matches one pattern against one subject, as Lua's `match` does.
struct Matcher<'a, 'b, 'g> {
    subject: &'a [u8],
    pattern: &'a [u8],
    /// Captures opened so far; only the first `level` entries are live.
    captures: [(usize, Extent); MAX_CAPTURES],
    level: usize,
    /// Recursion levels left before "pattern too complex".
    depth_left: usize,
    budget: &'b mut Budget<'g>,
}

impl<'a, 'b, 'g> Matcher<'a, 'b, 'g> {
    fn new(subject: &'a [u8], pattern: &'a [u8], budget: &'b mut Budget<'g>) -> Self {
        Matcher {
            subject,
            pattern,
            captures: [(0, Extent::Open); MAX_CAPTURES],
            level: 0,
            depth_left: MAX_DEPTH,
            budget,
        }
    }

    /// Tries the whole pattern at subject byte `start`; returns where the match ends.
    fn attempt(&mut self, start: usize) -> Result<Option<usize>, Stop> {
        self.level = 0;
        self.depth_left = MAX_DEPTH;
        self.match_from(start, 0)
    }

    /// The match just found by [`Matcher::attempt`].
    fn found(&self, start: usize, end: usize) -> Match {
        Match {
            start,
            end,
            slots: self.captures[..self.level].to_vec(),
        }
    }

    /// The pattern byte at `at`, or 0 past the end (Lua reads the C string's NUL).
    fn pattern_byte(&self, at: usize) -> u8 {
        self.pattern.get(at).copied().unwrap_or(0)
    }

    /// Matches the pattern from byte `pattern` against the subject from byte
    /// `subject`; one level of Lua's recursive `match`.
    fn match_from(&mut self, subject: usize, pattern: usize) -> Result<Option<usize>, Stop> {
        if self.depth_left == 0 {
            return Err(invalid("pattern too complex"));
        }
        self.depth_left -= 1;
        let result = self.match_items(subject, pattern);
        self.depth_left += 1;
        result
    }

    fn match_items(
        &mut self,
        mut subject: usize,
        mut pattern: usize,
    ) -> Result<Option<usize>, Stop> {
        loop {
            self.budget.charge(1)?;
            if pattern == self.pattern.len() {
                return Ok(Some(subject));
            }
            let next = match self.pattern[pattern] {
                b'(' if self.pattern_byte(pattern + 1) == b')' => {
                    Next::Done(self.start_capture(subject, pattern + 2, Extent::Position)?)
                }
                b'(' => Next::Done(self.start_capture(subject, pattern + 1, Extent::Open)?),
                b')' => Next::Done(self.end_capture(subject, pattern + 1)?),
                b'$' if pattern + 1 == self.pattern.len() => {
                    Next::Done((subject == self.subject.len()).then_some(subject))
                }
                ESCAPE if matches!(self.pattern_byte(pattern + 1), b'b' | b'f' | b'0'..=b'9') => {
                    self.match_escape(subject, pattern)?
                }
                _ => self.match_single(subject, pattern)?,
            };
            match next {
                Next::Continue {
                    subject: next_subject,
                    pattern: next_pattern,
                } => {
                    subject = next_subject;
                    pattern = next_pattern;
                }
                Next::Done(end) => return Ok(end),
            }
        }
    }

    /// `%bxy`, `%f[set]` and back-references `%1`-`%9`, at pattern byte `pattern` (the `%`).
    fn match_escape(&mut self, subject: usize, pattern: usize) -> Result<Next, Stop> {
        let code = self.pattern_byte(pattern + 1);
        let end = match code {
            b'b' => {
                let end = self.match_balance(subject, pattern + 2)?;
                return Ok(end.map_or(Next::Done(None), |end| Next::Continue {
                    subject: end,
                    pattern: pattern + 4,
                }));
            }
            b'f' => return self.match_frontier(subject, pattern + 2),
            _ => self.match_back_reference(subject, code)?,
        };
        Ok(end.map_or(Next::Done(None), |end| Next::Continue {
            subject: end,
            pattern: pattern + 2,
        }))
    }

    /// A single-byte class (literal, `.`, `%x` or `[set]`) and its quantifier.
    fn match_single(&mut self, subject: usize, pattern: usize) -> Result<Next, Stop> {
        let class_end = self.class_end(pattern)?;
        let quantifier = self.pattern_byte(class_end);
        if !self.single_matches(subject, pattern, class_end) {
            return Ok(match quantifier {
                b'*' | b'?' | b'-' => Next::Continue {
                    subject,
                    pattern: class_end + 1,
                },
                _ => Next::Done(None),
            });
        }
        Ok(match quantifier {
            b'?' => match self.match_from(subject + 1, class_end + 1)? {
                Some(end) => Next::Done(Some(end)),
                None => Next::Continue {
                    subject,
                    pattern: class_end + 1,
                },
            },
            b'+' => Next::Done(self.max_expand(subject + 1, pattern, class_end)?),
            b'*' => Next::Done(self.max_expand(subject, pattern, class_end)?),
            b'-' => Next::Done(self.min_expand(subject, pattern, class_end)?),
            _ => Next::Continue {
                subject: subject + 1,
                pattern: class_end,
            },
        })
    }

    /// Where the single-byte class starting at pattern byte `pattern` ends.
    fn class_end(&self, pattern: usize) -> Result<usize, Stop> {
        let mut at = pattern + 1;
        match self.pattern[pattern] {
            ESCAPE if at >= self.pattern.len() => Err(invalid("malformed pattern (ends with '%')")),
            ESCAPE => Ok(at + 1),
            b'[' => {
                if self.pattern_byte(at) == b'^' {
                    at += 1;
                }
                // The first byte of a set is never its end, so `[]]` is a set of `]`.
                loop {
                    if at >= self.pattern.len() {
                        return Err(invalid("malformed pattern (missing ']')"));
                    }
                    let byte = self.pattern[at];
                    at += 1;
                    if byte == ESCAPE && at < self.pattern.len() {
                        at += 1;
                    }
                    if self.pattern_byte(at) == b']' {
                        return Ok(at + 1);
                    }
                }
            }
            _ => Ok(at),
        }
    }

    /// Whether subject byte `subject` exists and is in the class at
    /// `pattern..class_end`.
    fn single_matches(&self, subject: usize, pattern: usize, class_end: usize) -> bool {
        let Some(&byte) = self.subject.get(subject) else {
            return false;
        };
        match self.pattern[pattern] {
            b'.' => true,
            ESCAPE => class_matches(byte, self.pattern[pattern + 1]),
            b'[' => self.set_matches(byte, pattern, class_end - 1),
            literal => literal == byte,
        }
    }

    /// Whether `byte` is in the set `[...]` from pattern byte `open` (the `[`)
    /// to `close` (its `]`).
    fn set_matches(&self, byte: u8, open: usize, close: usize) -> bool {
        let mut at = open + 1;
        let mut member = true;
        if self.pattern_byte(at) == b'^' {
            member = false;
            at += 1;
        }
        while at < close {
            let item = self.pattern[at];
            if item == ESCAPE {
                at += 1;
                if class_matches(byte, self.pattern_byte(at)) {
                    return member;
                }
                at += 1;
            } else if self.pattern_byte(at + 1) == b'-' && at + 2 < close {
                if item <= byte && byte <= self.pattern[at + 2] {
                    return member;
                }
                at += 3;
            } else {
                if item == byte {
                    return member;
                }
                at += 1;
            }
        }
        !member
    }

    /// `x*` (and `x+` after its first byte): the longest run that lets the
    /// rest of the pattern match.
    fn max_expand(
        &mut self,
        subject: usize,
        pattern: usize,
        class_end: usize,
    ) -> Result<Option<usize>, Stop> {
        let mut count = 0;
        while self.single_matches(subject + count, pattern, class_end) {
            self.budget.charge(1)?;
            count += 1;
        }
        loop {
            if let Some(end) = self.match_from(subject + count, class_end + 1)? {
                return Ok(Some(end));
            }
            if count == 0 {
                return Ok(None);
            }
            count -= 1;
        }
    }

    /// `x-`: the shortest run that lets the rest of the pattern match.
    fn min_expand(
        &mut self,
        mut subject: usize,
        pattern: usize,
        class_end: usize,
    ) -> Result<Option<usize>, Stop> {
        loop {
            if let Some(end) = self.match_from(subject, class_end + 1)? {
                return Ok(Some(end));
            }
            if !self.single_matches(subject, pattern, class_end) {
                return Ok(None);
            }
            subject += 1;
        }
    }

    fn start_capture(
        &mut self,
        subject: usize,
        pattern: usize,
        extent: Extent,
    ) -> Result<Option<usize>, Stop> {
        if self.level >= MAX_CAPTURES {
            return Err(invalid("too many captures"));
        }
        self.captures[self.level] = (subject, extent);
        self.level += 1;
        let end = self.match_from(subject, pattern)?;
        if end.is_none() {
            self.level -= 1;
        }
        Ok(end)
    }

    fn end_capture(&mut self, subject: usize, pattern: usize) -> Result<Option<usize>, Stop> {
        let Some(index) = (0..self.level)
            .rev()
            .find(|&index| self.captures[index].1 == Extent::Open)
        else {
            return Err(invalid("invalid pattern capture"));
        };
        let start = self.captures[index].0;
        self.captures[index].1 = Extent::Closed(subject - start);
        let end = self.match_from(subject, pattern)?;
        if end.is_none() {
            self.captures[index].1 = Extent::Open;
        }
        Ok(end)
    }

    /// `%bxy` with `x` at pattern byte `pattern`.
    fn match_balance(&mut self, subject: usize, pattern: usize) -> Result<Option<usize>, Stop> {
        if pattern + 1 >= self.pattern.len() {
            return Err(invalid("malformed pattern (missing arguments to '%b')"));
        }
        let (open, close) = (self.pattern[pattern], self.pattern[pattern + 1]);
        if self.subject.get(subject) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        for at in subject + 1..self.subject.len() {
            self.budget.charge(1)?;
            let byte = self.subject[at];
            if byte == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(at + 1));
                }
            } else if byte == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    /// `%f[set]` with the `[` at pattern byte `pattern`: matches the empty
    /// string between a byte outside the set and one inside it (the subject's
    /// edges count as the byte 0).
    fn match_frontier(&mut self, subject: usize, pattern: usize) -> Result<Next, Stop> {
        if self.pattern_byte(pattern) != b'[' {
            return Err(invalid("missing '[' after '%f' in pattern"));
        }
        let class_end = self.class_end(pattern)?;
        let previous = match subject {
            0 => 0,
            _ => self.subject[subject - 1],
        };
        let current = self.subject.get(subject).copied().unwrap_or(0);
        if !self.set_matches(previous, pattern, class_end - 1)
            && self.set_matches(current, pattern, class_end - 1)
        {
            return Ok(Next::Continue {
                subject,
                pattern: class_end,
            });
        }
        Ok(Next::Done(None))
    }

    /// `%1`-`%9` (and the invalid `%0`): the text of an earlier, closed capture.
    fn match_back_reference(&mut self, subject: usize, digit: u8) -> Result<Option<usize>, Stop> {
        let index = usize::from(digit).wrapping_sub(usize::from(b'1'));
        let slot = self.captures[..self.level].get(index).copied();
        let (start, extent) = match slot {
            Some((_, Extent::Open)) | None => {
                let number = i32::from(digit) - i32::from(b'0');
                return Err(invalid(format!("invalid capture index %{number}")));
            }
            Some(slot) => slot,
        };
        // A position capture has no text; Lua's length check always fails for it.
        let Extent::Closed(len) = extent else {
            return Ok(None);
        };
        self.budget.charge_bytes(len)?;
        let rest = &self.subject[subject..];
        let matched = rest.len() >= len && rest[..len] == self.subject[start..start + len];
        Ok(matched.then_some(subject + len))
    }
}

/// Whether `byte` is in the class `%class` (`%a`, `%D`, ..., and the
/// deprecated `%z` for the byte 0); any other
/// `class` stands for itself, so `%.` matches a dot.
fn class_matches(byte: u8, class: u8) -> bool {
    let in_class = match class.to_ascii_lowercase() {
        b'a' => byte.is_ascii_alphabetic(),
        b'c' => byte.is_ascii_control(),
        b'd' => byte.is_ascii_digit(),
        b'g' => byte.is_ascii_graphic(),
        b'l' => byte.is_ascii_lowercase(),
        b'p' => byte.is_ascii_punctuation(),
        // C's isspace also counts the vertical tab, unlike `is_ascii_whitespace`.
        b's' => matches!(byte, b' ' | b'\t'..=b'\r'),
        b'u' => byte.is_ascii_uppercase(),
        b'w' => byte.is_ascii_alphanumeric(),
        b'x' => byte.is_ascii_hexdigit(),
        // Not in the manual any more, but Lua 5.4 still accepts it.
        b'z' => byte == 0,
        _ => return class == byte,
    };
    in_class != class.is_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited(_steps: u64) -> Option<Fatal> {
        None
    }

    /// `string.match` in plain Rust: the captures (or whole match) as strings.
    fn matches(subject: &str, pattern: &str) -> Result<Option<Vec<String>>, Stop> {
        let mut budget = Budget::new(1000, &unlimited);
        let Some(found) = find(subject.as_bytes(), pattern.as_bytes(), 0, &mut budget)? else {
            return Ok(None);
        };
        let captures = found.captures_or_whole()?;
        Ok(Some(
            captures
                .into_iter()
                .map(|capture| match capture {
                    Capture::Text { start, end } => subject[start..end].to_string(),
                    Capture::Position(position) => position.to_string(),
                })
                .collect(),
        ))
    }

    fn one(subject: &str, pattern: &str) -> Option<String> {
        let found = matches(subject, pattern).expect("valid pattern");
        found.map(|captures| captures.join("|"))
    }

    /// Goal: the matcher's core items behave as in Lua. Method: `string.match`
    /// cases whose answers the reference manual spells out, without Lua.
    #[test]
    fn items_match_as_the_manual_says() {
        let cases = [
            ("hello world", "o w", Some("o w")),
            ("hello", "l+", Some("ll")),
            ("hello", "x*", Some("")),
            ("hello", "^h.-l", Some("hel")),
            ("hello", "^e", None),
            ("hello", "o$", Some("o")),
            ("key = value", "(%w+)%s*=%s*(%w+)", Some("key|value")),
            ("THE (quick) fox", "%((%a+)%)", Some("quick")),
            ("f(a(b)c)d", "%b()", Some("(a(b)c)")),
            ("THE (quick) fox", "%f[%a]%a+%f[%A]", Some("THE")),
            ("hello", "()ll()", Some("3|5")),
            ("abcabc", "(abc)%1", Some("abc")),
            ("a]b", "[]]", Some("]")),
            ("a-b", "[a%-]+", Some("a-")),
            ("x9", "[^%a]", Some("9")),
            ("0x1F", "%x+$", Some("1F")),
        ];
        for (subject, pattern, expected) in cases {
            assert_eq!(
                one(subject, pattern).as_deref(),
                expected,
                "{subject:?} {pattern:?}"
            );
        }
    }

    /// Goal: malformed patterns fail with Lua's messages. Method: one pattern per message.
    #[test]
    fn malformed_patterns_give_lua_messages() {
        let cases = [
            ("a%", "malformed pattern (ends with '%')"),
            ("[a", "malformed pattern (missing ']')"),
            ("%b", "malformed pattern (missing arguments to '%b')"),
            ("%fa", "missing '[' after '%f' in pattern"),
            ("a)", "invalid pattern capture"),
            ("(a)%2", "invalid capture index %2"),
            ("(a", "unfinished capture"),
        ];
        for (pattern, message) in cases {
            assert_eq!(
                matches("a", pattern),
                Err(Stop::Invalid(message.to_string())),
                "{pattern:?}"
            );
        }
        let many = "()".repeat(MAX_CAPTURES + 1);
        assert_eq!(
            matches("a", &many),
            Err(Stop::Invalid("too many captures".to_string()))
        );
        // Each `a?` that matches nests one level: 200 of them (plus the
        // outermost call) are one too many, 199 are fine.
        let subject = "a".repeat(MAX_DEPTH);
        assert_eq!(
            matches(&subject, &"a?".repeat(MAX_DEPTH)),
            Err(Stop::Invalid("pattern too complex".to_string()))
        );
        assert!(matches(&subject, &"a?".repeat(MAX_DEPTH - 1)).is_ok());
    }

    /// Goal: the budget stops a runaway match. Method: a guard that trips
    /// after 10 000 steps, against a pattern that needs billions.
    #[test]
    fn budget_stops_runaway_matches() {
        let steps = std::sync::atomic::AtomicU64::new(0);
        let report = |taken: u64| {
            let total = steps.fetch_add(taken, std::sync::atomic::Ordering::Relaxed) + taken;
            (total > 10_000).then_some(Fatal::Timeout)
        };
        let mut budget = Budget::new(100, &report);
        let subject = vec![b'a'; 100_000];
        let result = find(&subject, b".-.-.-.-b", 0, &mut budget);
        assert_eq!(result, Err(Stop::Limit(Fatal::Timeout)));
    }
}
