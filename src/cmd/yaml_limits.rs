//! Bounds a YAML text must stay within before yaml-rust2 loads it: documents, aliases, nodes
//! once every alias is expanded, and nesting depth (aliases expanded). Measured on the parser's
//! event stream, which keeps its state on the heap, so measuring never recurses; the loader, the
//! `Yaml` tree's clone and drop and the checks then recurse at most [`MAX_DEPTH`] levels.
//! Self-contained (std and yaml-rust2 only) so the fuzz target can include it.

use yaml_rust2::parser::{Event, Parser};

/// More documents (`---`) than any real manifest file has.
pub const MAX_DOCUMENTS: u64 = 10_000;
/// More alias uses (`*name`) than any real manifest has.
pub const MAX_ALIASES: u64 = 1_000;
/// More nodes, once every alias is expanded, than any real manifest has (a big one is ~10^4).
pub const MAX_EXPANDED_NODES: u64 = 1_000_000;
/// Deeper nesting (collections in collections, aliases expanded) than any real manifest has: a
/// CRD's OpenAPI schema, among the deepest, is under 40 levels. Each level costs the loader and
/// the checks a few hundred bytes of stack; 256 levels stay far inside the smallest stack the
/// agent runs on (the release musl binary's main thread).
pub const MAX_DEPTH: u64 = 256;

/// What was measured; a count stops growing once its limit is passed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub documents: u64,
    pub aliases: u64,
    pub nodes: u64,
    pub depth: u64,
}

/// The first limit a text is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Documents,
    Aliases,
    Nodes,
    Depth,
}

impl Shape {
    pub fn over(&self) -> Option<Over> {
        if self.documents > MAX_DOCUMENTS {
            Some(Over::Documents)
        } else if self.depth > MAX_DEPTH {
            Some(Over::Depth)
        } else if self.aliases > MAX_ALIASES {
            Some(Over::Aliases)
        } else if self.nodes > MAX_EXPANDED_NODES {
            Some(Over::Nodes)
        } else {
            None
        }
    }
}

/// An open collection: its anchor id, its expanded size so far (itself included) and its
/// expanded height so far (itself included).
struct Open {
    anchor: usize,
    size: u64,
    height: u64,
}

/// Measures `text` on the event stream (linear in the text, no recursion) and stops as soon as
/// a limit is passed. A syntax error stops the measure; the loader then reports it at the same
/// spot, having built no more than was measured.
pub fn measure(text: &str) -> Shape {
    let mut parser = Parser::new_from_str(text);
    // Expanded (size, height) of each anchored node, by anchor id.
    let mut anchors: std::collections::HashMap<usize, (u64, u64)> =
        std::collections::HashMap::new();
    let mut open: Vec<Open> = Vec::new();
    // Sum of the open collections' sizes, kept so each check is O(1).
    let mut open_sum = 0u64;
    let mut total = 0u64;
    let mut s = Shape::default();
    while let Ok((event, _)) = parser.next_token() {
        // A finished node: its expanded (size, height).
        let done = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                s.documents += 1;
                None
            }
            Event::Scalar(_, _, anchor, _) => {
                if anchor != 0 {
                    anchors.insert(anchor, (1, 1));
                }
                Some((1, 1))
            }
            Event::Alias(id) => {
                s.aliases += 1;
                Some(anchors.get(&id).copied().unwrap_or((1, 1)))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push(Open {
                    anchor,
                    size: 1,
                    height: 1,
                });
                open_sum = open_sum.saturating_add(1);
                s.depth = s.depth.max(open.len() as u64);
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match open.pop() {
                Some(o) => {
                    open_sum = open_sum.saturating_sub(o.size);
                    if o.anchor != 0 {
                        anchors.insert(o.anchor, (o.size, o.height));
                    }
                    Some((o.size, o.height))
                }
                None => None,
            },
            _ => None,
        };
        if let Some((size, height)) = done {
            // An expanded alias nests its whole anchored node at this depth.
            s.depth = s.depth.max((open.len() as u64).saturating_add(height));
            match open.last_mut() {
                Some(parent) => {
                    parent.size = parent.size.saturating_add(size);
                    parent.height = parent.height.max(height.saturating_add(1));
                    open_sum = open_sum.saturating_add(size);
                }
                None => total = total.saturating_add(size),
            }
        }
        // An open collection's running size counts too: a bomb inside one never closes early.
        s.nodes = total.saturating_add(open_sum);
        if s.over().is_some() {
            return s;
        }
    }
    s.nodes = total.saturating_add(open_sum);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_seq(levels: usize) -> String {
        format!("kind: Pod\nspec:\n{}a\n", "- ".repeat(levels))
    }

    fn nested_map(levels: usize) -> String {
        let mut t = String::from("kind: Pod\nspec:\n");
        for i in 0..levels {
            t.push_str(&" ".repeat(i + 1));
            t.push_str("k:\n");
        }
        t.push_str(&" ".repeat(levels + 1));
        t.push_str("v\n");
        t
    }

    #[test]
    fn depth_of_block_sequences_and_mappings() {
        // Nodes on the deepest path: the document's mapping, one level per `- `, the scalar.
        assert_eq!(measure(&nested_seq(10)).depth, 12);
        assert_eq!(measure(&nested_map(10)).depth, 12);
        assert_eq!(measure(&nested_seq(5_000)).over(), Some(Over::Depth));
        assert_eq!(measure(&nested_map(3_000)).over(), Some(Over::Depth));
        let flow = format!("a: {}1{}\n", "[".repeat(300), "]".repeat(300));
        let s = measure(&flow);
        assert!(
            s.over() == Some(Over::Depth) || s.depth < MAX_DEPTH,
            "{s:?}"
        );
    }

    #[test]
    fn measuring_a_million_levels_does_not_recurse() {
        let s = measure(&nested_seq(1_000_000));
        assert_eq!(s.over(), Some(Over::Depth));
        assert_eq!(s.depth, MAX_DEPTH + 1, "stops at the first level over");
    }

    #[test]
    fn aliases_nest_their_anchored_node() {
        // 200 levels anchored, then aliased 200 levels deep: 400 once expanded.
        let deep = format!("a: &d {}x{}\n", "[".repeat(100), "]".repeat(100));
        let t = format!("{deep}b: {}*d{}\n", "[".repeat(200), "]".repeat(200));
        let s = measure(&t);
        assert_eq!(s.over(), Some(Over::Depth), "{s:?}");
        let shallow = format!("{deep}b: [[*d]]\n");
        assert_eq!(measure(&shallow).over(), None);
        assert_eq!(measure(&shallow).depth, 104);
    }

    #[test]
    fn documents_are_counted_on_their_own() {
        let many = "---\na: 1\n".repeat(10_001);
        let s = measure(&many);
        assert_eq!(s.over(), Some(Over::Documents), "{s:?}");
        assert_eq!(s.aliases, 0);
        let ok = "---\na: 1\n".repeat(100);
        assert_eq!(measure(&ok).documents, 100);
        assert_eq!(measure(&ok).over(), None);
    }
}
