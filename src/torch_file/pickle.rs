//! A restricted unpickler (docs/pytorch-files.md §2): the opcodes of Python's pickle protocols 2
//! to 5 that `torch.save` writes (not protocol 5's out-of-band buffers), run as a stack machine
//! that builds values and never runs anything. A global (`torch._utils
//! _rebuild_tensor_v2`, `collections OrderedDict`, a class) is kept as its two names, and a call
//! of it (`REDUCE`, `NEWOBJ`) as the callable and its arguments; the caller decides what such a
//! call means. Persistent ids (torch's storages) are kept as the value the file gave them.
//!
//! Containers live in one arena ([`Pickle::nodes`]) and values refer to them by index, so a list
//! filled after it was memoized is the same list wherever it is referred to, cycles are harmless,
//! and dropping the result never recurses.

use std::collections::HashMap;
use std::rc::Rc;

use super::{invalid, little_endian};
use crate::error::Result;

/// One value of the pickle.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// A container, global, call or persistent id: an index into [`Pickle::nodes`].
    Node(usize),
    /// Anything not needed to find tensors (bytes, sets, integers beyond `i64`): read past.
    Other,
}

/// What a [`Value::Node`] refers to.
#[derive(Debug, PartialEq)]
pub enum Node {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict's items in the order they were set (a later one of the same key wins, as in
    /// Python). `collections.OrderedDict()` is one too.
    Dict(Vec<(Value, Value)>),
    /// `module.name`, not looked up.
    Global {
        module: Rc<str>,
        name: Rc<str>,
    },
    /// `callable(*args)` (a `REDUCE` or `NEWOBJ`), not run; state set on it later is dropped.
    Call {
        callable: Value,
        args: Value,
    },
    /// A persistent id: the value the pickler's `persistent_id` returned.
    Persistent(Value),
}

/// The result of unpickling: the root value and the arena its containers live in.
#[derive(Debug)]
pub struct Pickle {
    pub root: Value,
    pub nodes: Vec<Node>,
}

impl Pickle {
    /// Runs the pickle `bytes` to its `STOP`.
    pub fn parse(bytes: &[u8]) -> Result<Pickle> {
        let mut machine = Machine {
            input: bytes,
            at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            nodes: Vec::new(),
        };
        let root = machine.run()?;
        Ok(Pickle {
            root,
            nodes: machine.nodes,
        })
    }

    /// The node `value` refers to, if it is one.
    pub fn node(&self, value: &Value) -> Option<&Node> {
        node_in(&self.nodes, value)
    }

    /// The items of `value` when it is a tuple.
    pub fn tuple(&self, value: &Value) -> Option<&[Value]> {
        match self.node(value) {
            Some(Node::Tuple(items)) => Some(items),
            _ => None,
        }
    }

    /// The items of `value` when it is a dict, in order; a later item of a string key replaces
    /// the earlier one in its place, as in Python (other keys are kept as they come).
    pub fn dict(&self, value: &Value) -> Option<Vec<(&Value, &Value)>> {
        let Some(Node::Dict(items)) = self.node(value) else {
            return None;
        };
        let mut unique: Vec<(&Value, &Value)> = Vec::with_capacity(items.len());
        // by the string's address first: a key the memo recalls many times is hashed once
        let mut by_address: HashMap<*const u8, usize> = HashMap::new();
        let mut by_text: HashMap<&str, usize> = HashMap::new();
        for (key, item) in items {
            let Value::Str(name) = key else {
                unique.push((key, item));
                continue;
            };
            let place = match by_address.get(&name.as_ptr()) {
                Some(&place) => place,
                None => *by_text.entry(name).or_insert(unique.len()),
            };
            by_address.insert(name.as_ptr(), place);
            if place == unique.len() {
                unique.push((key, item));
            } else {
                unique[place].1 = item;
            }
        }
        Some(unique)
    }

    /// `(module, name)` when `value` is a global.
    pub fn global(&self, value: &Value) -> Option<(&str, &str)> {
        match self.node(value) {
            Some(Node::Global { module, name }) => Some((module, name)),
            _ => None,
        }
    }
}

/// The unpickler's state: the input, the stack with its marks, the memo and the arena.
struct Machine<'a> {
    input: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    nodes: Vec<Node>,
}

impl Machine<'_> {
    /// Runs opcodes until `STOP`, whose value is the result.
    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.at;
            let opcode = self.take(1)?[0];
            if opcode == b'.' {
                return self.pop();
            }
            self.step(opcode).map_err(|error| match error {
                crate::error::Error::TorchFile(detail) => invalid(format!(
                    "data.pkl, opcode {opcode:#04x} at byte {at}: {detail}"
                )),
                other => other,
            })?;
        }
    }

    /// Runs one opcode (Python's `Lib/pickletools.py` lists them).
    fn step(&mut self, opcode: u8) -> Result<()> {
        match opcode {
            0x80 => self.protocol(),
            0x95 => self.take(8).map(drop), // FRAME: a hint for streaming readers
            b'(' => {
                self.marks.push(self.stack.len());
                Ok(())
            }
            b'0' => self.pop().map(drop),
            b'1' => self.pop_mark().map(drop),
            b'2' => {
                let top = self.peek()?.clone();
                self.push(top);
                Ok(())
            }
            _ => match self.scalar(opcode)? {
                Some(value) => {
                    self.push(value);
                    Ok(())
                }
                None => self.build(opcode),
            },
        }
    }

    /// The opcodes that push one value read from the input; `None` for any other opcode.
    fn scalar(&mut self, opcode: u8) -> Result<Option<Value>> {
        Ok(Some(match opcode {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(i32::from_le_bytes(self.array()?).into()),
            b'K' => Value::Int(self.take(1)?[0].into()),
            b'M' => Value::Int(u16::from_le_bytes(self.array()?).into()),
            0x8a => {
                let length = self.take(1)?[0].into();
                self.long(length)?
            }
            0x8b => {
                let length = self.length(4)?;
                self.long(length)?
            }
            b'G' => Value::Float(f64::from_be_bytes(self.array()?)),
            b'X' => self.unicode(4)?,
            0x8c => self.unicode(1)?,
            0x8d => self.unicode(8)?,
            b'U' => self.latin1(1)?,
            b'T' => self.latin1(4)?,
            b'B' => self.skip_bytes(4)?,
            b'C' => self.skip_bytes(1)?,
            0x8e => self.skip_bytes(8)?,
            _ => return Ok(None),
        }))
    }

    /// The opcodes that make or fill containers, globals, calls and the memo.
    fn build(&mut self, opcode: u8) -> Result<()> {
        match opcode {
            b')' => self.new_node(Node::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.new_node(Node::Tuple(items))
            }
            0x85..=0x87 => {
                let at = self.stack.len().checked_sub(usize::from(opcode - 0x84));
                let items = self.split_off(at)?;
                self.new_node(Node::Tuple(items))
            }
            b']' => self.new_node(Node::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.new_node(Node::List(items))
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?
            }
            b'}' => self.new_node(Node::Dict(Vec::new())),
            b'd' => {
                let items = pairs(self.pop_mark()?)?;
                self.new_node(Node::Dict(items))
            }
            b's' => {
                let at = self.stack.len().checked_sub(2);
                let items = pairs(self.split_off(at)?)?;
                self.extend_dict(items)?
            }
            b'u' => {
                let items = pairs(self.pop_mark()?)?;
                self.extend_dict(items)?
            }
            0x8f => self.push(Value::Other),
            0x90 => drop(self.pop_mark()?), // ADDITEMS: to a set, not needed
            0x91 => {
                self.pop_mark()?;
                self.push(Value::Other)
            }
            _ => self.call_or_memo(opcode)?,
        }
        Ok(())
    }

    /// Globals, calls, `BUILD`, persistent ids and the memo.
    fn call_or_memo(&mut self, opcode: u8) -> Result<()> {
        match opcode {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.new_node(Node::Global { module, name })
            }
            0x93 => {
                let name = self.pop_str()?;
                let module = self.pop_str()?;
                self.new_node(Node::Global { module, name })
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)
            }
            b'b' => {
                // BUILD: the state of the object below (an object's `__dict__`), not needed.
                self.pop()?;
                self.peek()?;
            }
            b'Q' => {
                let id = self.pop()?;
                self.new_node(Node::Persistent(id))
            }
            b'q' => {
                let index = self.take(1)?[0].into();
                self.memoize(index)?
            }
            b'r' => {
                let index = u32::from_le_bytes(self.array()?);
                self.memoize(index)?
            }
            0x94 => {
                let index = u32::try_from(self.memo.len())
                    .map_err(|_| invalid("more memo entries than a u32 counts"))?;
                self.memoize(index)?
            }
            b'h' => {
                let index = self.take(1)?[0].into();
                self.recall(index)?
            }
            b'j' => {
                let index = u32::from_le_bytes(self.array()?);
                self.recall(index)?
            }
            _ => {
                return Err(invalid(
                    "not an opcode of pickle protocols 2 to 4 as torch.save writes them",
                ));
            }
        }
        Ok(())
    }

    /// `PROTO`: protocols 2 to 5 share the opcodes read here.
    fn protocol(&mut self) -> Result<()> {
        match self.take(1)?[0] {
            2..=5 => Ok(()),
            other => Err(invalid(format!(
                "pickle protocol {other} (expected 2 to 5)"
            ))),
        }
    }

    /// `LONG1`, `LONG4`: a little-endian two's-complement integer of `length` bytes.
    fn long(&mut self, length: usize) -> Result<Value> {
        let bytes = self.take(length)?;
        Ok(match bytes.len() {
            0 => Value::Int(0),
            1..=8 => {
                let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
                    0xff
                } else {
                    0
                };
                let mut wide = [fill; 8];
                wide[..bytes.len()].copy_from_slice(bytes);
                Value::Int(i64::from_le_bytes(wide))
            }
            _ => Value::Other,
        })
    }

    /// `BINUNICODE` and its short and long twins: UTF-8 text after a length of `width` bytes.
    fn unicode(&mut self, width: usize) -> Result<Value> {
        let length = self.length(width)?;
        Ok(Value::Str(
            String::from_utf8_lossy(self.take(length)?).into(),
        ))
    }

    /// `SHORT_BINSTRING`, `BINSTRING`: a Python 2 `str`, read as Latin-1 (as `encoding="latin1"`).
    fn latin1(&mut self, width: usize) -> Result<Value> {
        let length = self.length(width)?;
        let text: String = self.take(length)?.iter().map(|&b| char::from(b)).collect();
        Ok(Value::Str(text.into()))
    }

    /// `BINBYTES` and its twins: `bytes`, not needed.
    fn skip_bytes(&mut self, width: usize) -> Result<Value> {
        let length = self.length(width)?;
        self.take(length)?;
        Ok(Value::Other)
    }

    /// `REDUCE`, `NEWOBJ`: kept as a call, except `collections.OrderedDict()`, a dict.
    fn call(&mut self, callable: Value, args: Value) {
        let ordered_dict = matches!(
            node_in(&self.nodes, &callable),
            Some(Node::Global { module, name }) if &**module == "collections" && &**name == "OrderedDict"
        );
        let empty =
            matches!(node_in(&self.nodes, &args), Some(Node::Tuple(items)) if items.is_empty());
        if ordered_dict && empty {
            self.new_node(Node::Dict(Vec::new()));
        } else {
            self.new_node(Node::Call { callable, args });
        }
    }

    /// `APPEND`, `APPENDS`: to the list on top of the stack; an object's items are dropped.
    fn extend_list(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top_node()? {
            Node::List(list) => list.extend(items),
            Node::Call { .. } => {}
            _ => return Err(invalid("APPEND to something that is not a list")),
        }
        Ok(())
    }

    /// `SETITEM`, `SETITEMS`: into the dict on top of the stack; an object's items are dropped.
    fn extend_dict(&mut self, items: Vec<(Value, Value)>) -> Result<()> {
        match self.top_node()? {
            Node::Dict(dict) => dict.extend(items),
            Node::Call { .. } => {}
            _ => return Err(invalid("SETITEM on something that is not a dict")),
        }
        Ok(())
    }

    /// Stores the value on top as memo entry `index`.
    fn memoize(&mut self, index: u32) -> Result<()> {
        let value = self.peek()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    /// Pushes memo entry `index`.
    fn recall(&mut self, index: u32) -> Result<()> {
        let value = self.memo.get(&index).cloned();
        self.push(value.ok_or_else(|| invalid(format!("memo entry {index} was never stored")))?);
        Ok(())
    }

    /// Adds `node` to the arena and pushes a value that refers to it.
    fn new_node(&mut self, node: Node) {
        self.nodes.push(node);
        self.push(Value::Node(self.nodes.len() - 1));
    }

    /// The node on top of the stack, to be filled.
    fn top_node(&mut self) -> Result<&mut Node> {
        match self.peek()? {
            &Value::Node(index) => Ok(&mut self.nodes[index]),
            _ => Err(invalid("the value to fill is not a container")),
        }
    }

    fn push(&mut self, value: Value) {
        self.stack.push(value);
    }

    /// The stack's height at the innermost mark: no opcode but those that take the values above
    /// a mark reaches below it (Python's unpickler keeps them on a stack of their own).
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    /// The value on top, taken off.
    fn pop(&mut self) -> Result<Value> {
        self.peek()?;
        self.stack
            .pop()
            .ok_or_else(|| invalid("the stack is empty"))
    }

    /// The value on top.
    fn peek(&self) -> Result<&Value> {
        match self.stack.last() {
            Some(top) if self.stack.len() > self.floor() => Ok(top),
            _ => Err(invalid("the stack is empty (above its last MARK)")),
        }
    }

    /// The string on top, taken off (`STACK_GLOBAL`'s names).
    fn pop_str(&mut self) -> Result<Rc<str>> {
        match self.pop()? {
            Value::Str(text) => Ok(text),
            _ => Err(invalid("STACK_GLOBAL's names are not strings")),
        }
    }

    /// The values above the last mark, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop();
        let mark = mark.ok_or_else(|| invalid("no MARK before an opcode that takes one"))?;
        if mark > self.stack.len() {
            return Err(invalid(
                "the values above a MARK were taken by another opcode",
            ));
        }
        Ok(self.stack.split_off(mark))
    }

    /// The values from stack position `at` up (`None`: fewer values than needed), none of them
    /// below the innermost mark.
    fn split_off(&mut self, at: Option<usize>) -> Result<Vec<Value>> {
        match at {
            Some(at) if self.floor() <= at && at <= self.stack.len() => {
                Ok(self.stack.split_off(at))
            }
            _ => Err(invalid(
                "the stack holds fewer values than the opcode takes",
            )),
        }
    }

    /// The next `n` bytes of input.
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let bytes = self
            .at
            .checked_add(n)
            .and_then(|end| self.input.get(self.at..end))
            .ok_or_else(|| invalid("the pickle ends before its STOP "))?;
        self.at += n;
        Ok(bytes)
    }

    /// The next `N` bytes of input.
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        Ok(std::array::from_fn(|i| bytes[i]))
    }

    /// A length of `width` little-endian bytes (a negative 4-byte one is an error).
    fn length(&mut self, width: usize) -> Result<usize> {
        let bytes = self.take(width)?;
        let value = little_endian(bytes);
        let negative = width == 4 && value >= 1 << 31;
        usize::try_from(value)
            .ok()
            .filter(|_| !negative)
            .ok_or_else(|| invalid(format!("a length of {value} bytes, beyond any input")))
    }

    /// A newline-terminated name (`GLOBAL`'s operands).
    fn line(&mut self) -> Result<Rc<str>> {
        let rest = &self.input[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| invalid("a GLOBAL name without its newline"))?;
        let text = String::from_utf8_lossy(&rest[..end]).into();
        self.at += end + 1;
        Ok(text)
    }
}

/// The node of `nodes` that `value` refers to, if it is one.
fn node_in<'n>(nodes: &'n [Node], value: &Value) -> Option<&'n Node> {
    match value {
        Value::Node(index) => nodes.get(*index),
        _ => None,
    }
}

/// Alternating keys and values as pairs.
fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(invalid("a dict's items are not key-value pairs"));
    }
    let mut items = items.into_iter();
    Ok(std::iter::from_fn(|| Some((items.next()?, items.next()?))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dict_filled_after_it_was_memoized_is_the_same_dict_where_it_is_recalled() {
        // d = {}; memo[0] = d; (d, d) with d['a'] = 1 set after the tuple refers to it
        let bytes = b"\x80\x02}q\x00h\x00\x86q\x01h\x00X\x01\x00\x00\x00aK\x01s0h\x01.";
        let pickle = Pickle::parse(bytes).unwrap();
        let pair = pickle.tuple(&pickle.root).unwrap();
        for value in pair {
            let items = pickle.dict(value).unwrap();
            assert_eq!(items, [(&Value::Str("a".into()), &Value::Int(1))]);
        }
    }

    #[test]
    fn a_later_item_of_a_key_wins_and_integers_keep_their_sign() {
        // {'k': -2, 'k': LONG1(2**40)}: Python keeps the last
        let bytes = b"\x80\x02}(X\x01\x00\x00\x00kJ\xfe\xff\xff\xffX\x01\x00\x00\x00k\x8a\x06\x00\x00\x00\x00\x00\x01u.";
        let pickle = Pickle::parse(bytes).unwrap();
        let items = pickle.dict(&pickle.root).unwrap();
        assert_eq!(items, [(&Value::Str("k".into()), &Value::Int(1 << 40))]);
        let negative = Pickle::parse(b"\x80\x02J\xfe\xff\xff\xff.").unwrap();
        assert_eq!(negative.root, Value::Int(-2));
        let long = Pickle::parse(b"\x80\x02\x8a\x02\x00\xff.").unwrap();
        assert_eq!(long.root, Value::Int(-256));
    }

    #[test]
    fn a_cycle_and_a_deep_nesting_neither_recurse_nor_overflow() {
        // l = []; l.append(l)
        let cycle = Pickle::parse(b"\x80\x02]q\x00h\x00a.").unwrap();
        let Some(Node::List(items)) = cycle.node(&cycle.root) else {
            panic!("not a list");
        };
        assert_eq!(items, std::slice::from_ref(&cycle.root));
        // a million nested 1-tuples: built in the arena, dropped without recursion
        let mut deep = b"\x80\x02N".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        deep.push(b'.');
        assert_eq!(Pickle::parse(&deep).unwrap().nodes.len(), 1_000_000);
    }

    #[test]
    fn globals_and_calls_are_kept_not_run() {
        // os.system('x'): a call of a global, never made
        let bytes = b"\x80\x02cos\nsystem\nX\x01\x00\x00\x00x\x85R.";
        let pickle = Pickle::parse(bytes).unwrap();
        let Some(Node::Call { callable, args }) = pickle.node(&pickle.root) else {
            panic!("not a call");
        };
        assert_eq!(pickle.global(callable), Some(("os", "system")));
        assert_eq!(pickle.tuple(args).unwrap(), [Value::Str("x".into())]);
    }

    #[test]
    fn malformed_pickles_are_errors_that_say_where() {
        let cases: [(&[u8], &str); 8] = [
            (b"\x80\x02", "before its STOP"),
            (b"\x80\x02.", "stack is empty"),
            (b"\x80\x01N.", "protocol 1"),
            (b"\x80\x02t.", "no MARK"),
            (b"\x80\x02h\x07.", "memo entry 7"),
            (b"\x80\x02NNu.", "no MARK"),
            (b"\x80\x02N(0.", "above its last MARK"),
            (b"\x80\x02I01\n.", "not an opcode"),
        ];
        for (bytes, expected) in cases {
            let message = Pickle::parse(bytes).unwrap_err().to_string();
            assert!(message.contains(expected), "{bytes:?}: {message}");
        }
        let message = Pickle::parse(b"\x80\x02K\x01a.").unwrap_err().to_string();
        assert!(message.contains("opcode 0x61 at byte 4"), "{message}");
    }
}
