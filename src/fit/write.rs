//! Writing fitted weights into a policy file in place of the old ones, keeping everything
//! else (comments, order, formatting) byte for byte: the YAML library cannot round-trip
//! comments, so only each response type's `weights:` block is rewritten.

use crate::policy::{Policy, PolicyError};

/// New weights for one response type.
#[derive(Debug, Clone)]
pub struct NewWeights {
    /// Name of the response type, as a key under `response_types:`.
    pub response_type: String,
    /// The reward's constant term.
    pub bias: f64,
    /// (proposition name, weight), written in this order.
    pub propositions: Vec<(String, f64)>,
    /// (class name, weight), written in this order.
    pub classes: Vec<(String, f64)>,
    /// Where the weights came from, kept in the file.
    pub source: String,
}

/// Why fitted weights could not be written into a policy file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file has no top-level `response_types:` key.
    #[error("the policy has no top-level `response_types:` block")]
    NoResponseTypes,
    /// A response type was not found under `response_types:` (or in the rewritten policy).
    #[error("response type `{0}` is not in the policy file")]
    NoResponseType(String),
    /// The rewritten text is not a valid policy.
    #[error("the rewritten policy does not validate: {0}")]
    Invalid(#[from] PolicyError),
    /// The file has no such top-level key or proposition to rewrite.
    #[error("the policy file has no `{0}` to rewrite")]
    Missing(String),
    /// The rewritten policy reads back other weights than those fitted, or lacks one of the
    /// named propositions or classes.
    #[error("the rewritten policy has different weights for `{0}` than fitted")]
    Mismatch(String),
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// End (exclusive) of the block starting at `start` whose key sits at `key_indent`.
fn block_end(lines: &[&str], start: usize, key_indent: usize) -> usize {
    let mut end = start + 1;
    let mut last_content = start;
    while end < lines.len() {
        if is_content(lines[end]) {
            if indent(lines[end]) <= key_indent {
                break;
            }
            last_content = end;
        }
        end += 1;
    }
    // Trailing blank lines and comments belong to what follows.
    last_content + 1
}

fn render(w: &NewWeights, pad: usize) -> Vec<String> {
    let p = " ".repeat(pad);
    let q = " ".repeat(pad + 2);
    let r = " ".repeat(pad + 4);
    let mut out = vec![format!("{p}weights:")];
    out.push(format!("{q}source: {}", serde_json::to_string(&w.source).unwrap_or_else(|_| "\"\"".into())));
    out.push(format!("{q}bias: {:.6}", w.bias));
    out.push(format!("{q}propositions:"));
    out.extend(w.propositions.iter().map(|(name, v)| format!("{r}{name}: {v:.6}")));
    out.push(format!("{q}classes:"));
    out.extend(w.classes.iter().map(|(name, v)| format!("{r}{name}: {v:.6}")));
    out
}

/// `text` with the weights of each response type in `weights` replaced, validated.
pub fn replace_weights(text: &str, weights: &[NewWeights]) -> Result<String, WriteError> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for w in weights {
        let view: Vec<&str> = lines.iter().map(String::as_str).collect();
        let section = view
            .iter()
            .position(|l| l.trim_end() == "response_types:" && indent(l) == 0)
            .ok_or(WriteError::NoResponseTypes)?;
        let section_end = block_end(&view, section, 0);
        let key = format!("{}:", w.response_type);
        let rt_line = (section + 1..section_end)
            .find(|&i| is_content(view[i]) && view[i].trim_end().trim_start() == key)
            .ok_or_else(|| WriteError::NoResponseType(w.response_type.clone()))?;
        let rt_indent = indent(view[rt_line]);
        let rt_end = block_end(&view, rt_line, rt_indent);
        let field_indent =
            (rt_line + 1..rt_end).find(|&i| is_content(view[i])).map_or(rt_indent + 2, |i| indent(view[i]));
        let at = |name: &str| {
            (rt_line + 1..rt_end).find(|&i| indent(view[i]) == field_indent && view[i].trim_start().starts_with(name))
        };
        let new_block = render(w, field_indent);
        match at("weights:") {
            Some(start) => {
                let end = block_end(&view, start, field_indent);
                lines.splice(start..end, new_block);
            }
            None => {
                let before = at("guidance:").or_else(|| at("fallback:")).unwrap_or(rt_end);
                lines.splice(before..before, new_block);
            }
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    let policy = Policy::from_yaml(&out, "rewritten policy")?;
    for w in weights {
        let rt = policy
            .response_type(&w.response_type)
            .ok_or_else(|| WriteError::NoResponseType(w.response_type.clone()))?;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-5;
        let props_ok = w
            .propositions
            .iter()
            .all(|(name, v)| policy.proposition_index(name).is_some_and(|i| close(rt.weights.propositions[i], *v)));
        let classes_ok =
            w.classes.iter().all(|(name, v)| rt.class_index(name).is_some_and(|i| close(rt.weights.classes[i], *v)));
        if !props_ok || !classes_ok || !close(rt.weights.bias, w.bias) {
            return Err(WriteError::Mismatch(w.response_type.clone()));
        }
    }
    Ok(out)
}

/// `text` with `disallowed_content`'s thresholds (`threshold` for the lenient `otherwise`,
/// `threshold_by_response_type` for every other type) and `response_type_prediction.confident`
/// replaced by `point`, validated; comments and everything else kept. `note` is written as a
/// comment above the `confident:` line.
pub fn replace_operating_points(
    text: &str,
    point: super::calibrate::OperatingPoint,
    note: &str,
) -> Result<String, WriteError> {
    let policy = Policy::from_yaml(text, "policy")?;
    let prediction = policy.prediction().ok_or_else(|| WriteError::Missing("response_type_prediction".into()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let view: Vec<&str> = lines.iter().map(String::as_str).collect();
    let top = |key: &str| view.iter().position(|l| l.trim_end() == key && indent(l) == 0);

    // response_type_prediction.confident: one flow-style line, replacing any earlier one.
    let section =
        top("response_type_prediction:").ok_or_else(|| WriteError::Missing("response_type_prediction".into()))?;
    let end = block_end(&view, section, 0);
    let pad = (section + 1..end).find(|&i| is_content(view[i])).map_or(2, |i| indent(view[i]));
    let keep: Vec<String> = (section + 1..end)
        .filter(|&i| {
            let t = view[i].trim_start();
            !(t.starts_with("confident:") || t.starts_with("# calibrated:")) || indent(view[i]) != pad
        })
        .map(|i| view[i].to_string())
        .collect();
    // `{ type: value, ... }` over every response type but the lenient one.
    let refusal_types = |value: f64| {
        let entries: Vec<String> = policy
            .response_types()
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != prediction.otherwise)
            .map(|(_, rt)| format!("{}: {value}", rt.name))
            .collect();
        format!("{{ {} }}", entries.join(", "))
    };
    let p = " ".repeat(pad);
    let mut block = keep;
    block.push(format!("{p}# calibrated: {note}"));
    block.push(format!("{p}confident: {}", refusal_types(point.confident)));

    // propositions.disallowed_content.threshold
    let props = top("propositions:").ok_or_else(|| WriteError::Missing("propositions".into()))?;
    let props_end = block_end(&view, props, 0);
    let prop = (props + 1..props_end)
        .find(|&i| is_content(view[i]) && view[i].trim() == "disallowed_content:")
        .ok_or_else(|| WriteError::Missing("propositions.disallowed_content".into()))?;
    let prop_indent = indent(view[prop]);
    let prop_end = block_end(&view, prop, prop_indent);
    let field = (prop + 1..prop_end).find(|&i| is_content(view[i])).map_or(prop_indent + 2, |i| indent(view[i]));
    let threshold_line = format!("{}threshold: {}", " ".repeat(field), point.disallowed_threshold);
    let by_line = format!(
        "{}threshold_by_response_type: {}",
        " ".repeat(field),
        refusal_types(point.refused_disallowed_threshold)
    );
    let field_line =
        |key: &str| (prop + 1..prop_end).find(|&i| indent(view[i]) == field && view[i].trim_start().starts_with(key));
    let at = field_line("threshold:");
    let by_at = field_line("threshold_by_response_type:").map(|i| i..block_end(&view, i, field));
    let mut threshold_edits: Vec<(std::ops::Range<usize>, Vec<String>)> = match (at, by_at) {
        (Some(i), Some(r)) => vec![(i..i + 1, vec![threshold_line]), (r, vec![by_line])],
        (Some(i), None) => vec![(i..i + 1, vec![threshold_line, by_line])],
        (None, Some(r)) => vec![(r, vec![threshold_line, by_line])],
        (None, None) => vec![(prop_end..prop_end, vec![threshold_line, by_line])],
    };
    // Later lines first, so that earlier indices stay valid.
    threshold_edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));

    // Edit the later block first so the earlier indices stay valid.
    let edits_later_first = section > prop;
    let apply_prediction = |lines: &mut Vec<String>| {
        lines.splice(section + 1..end, block.clone());
    };
    let apply_threshold = |lines: &mut Vec<String>| {
        for (range, new) in &threshold_edits {
            lines.splice(range.clone(), new.clone());
        }
    };
    if edits_later_first {
        apply_prediction(&mut lines);
        apply_threshold(&mut lines);
    } else {
        apply_threshold(&mut lines);
        apply_prediction(&mut lines);
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    let rewritten = Policy::from_yaml(&out, "rewritten policy")?;
    let lenient = rewritten.prediction().map(|p| p.otherwise);
    let thresholds_ok = rewritten.propositions().iter().find(|p| p.name == "disallowed_content").is_some_and(|p| {
        p.threshold == point.disallowed_threshold
            && p.by_response_type.iter().enumerate().all(|(i, &t)| {
                t == if Some(i) == lenient { point.disallowed_threshold } else { point.refused_disallowed_threshold }
            })
    });
    let confident_ok = rewritten.prediction().is_some_and(|p| {
        p.confident
            .iter()
            .enumerate()
            .all(|(i, &c)| i == p.otherwise || (c - point.confident.max(p.min_probability)).abs() < 1e-9)
    });
    if !thresholds_ok || !confident_ok {
        return Err(WriteError::Mismatch("operating points".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "# top comment\npolicy: t\nclasses:\n  good: g\n  bad: b\nactions:\n  good: pass\n  bad: pass\npropositions:\n  apology:\n    description: a\nresponse_types:\n  comply:\n    # the rules\n    classes:\n      good: { apology: false }\n      bad: { apology: true }\n    weights:\n      bias: 0.0\n      classes: { good: 1.0, bad: -1.0 }\n\n    # guidance follows\n    guidance: be nice\n  other:\n    classes:\n      good: { apology: true }\n      bad: { apology: false }\n";

    fn weights(rt: &str) -> NewWeights {
        NewWeights {
            response_type: rt.into(),
            bias: 0.0,
            propositions: vec![("apology".into(), -0.25)],
            classes: vec![("good".into(), 2.5), ("bad".into(), -2.0)],
            source: "rulegate fit on \"x.jsonl\"".into(),
        }
    }

    #[test]
    fn replaces_and_inserts_keeping_the_rest() {
        let out = replace_weights(POLICY, &[weights("comply"), weights("other")]).unwrap();
        assert!(out.starts_with("# top comment\n"));
        assert!(out.contains("    # the rules\n"));
        assert!(out.contains("\n\n    # guidance follows\n    guidance: be nice\n"), "{out}");
        assert!(!out.contains("bad: -1.0"));
        assert_eq!(out.matches("weights:").count(), 2);
        let policy = Policy::from_yaml(&out, "t").unwrap();
        let other = policy.response_type("other").unwrap();
        assert_eq!(other.weights.classes, vec![2.5, -2.0]);
        assert_eq!(other.weights.source.as_deref(), Some("rulegate fit on \"x.jsonl\""));
    }

    #[test]
    fn unknown_response_types_are_errors() {
        assert!(matches!(replace_weights(POLICY, &[weights("nope")]), Err(WriteError::NoResponseType(_))));
    }

    #[test]
    fn operating_points_are_written_in_place_and_read_back() {
        use crate::fit::calibrate::OperatingPoint;
        let policy = "# head\npolicy: t\nclasses:\n  good: g\n  bad: b\nactions:\n  good: pass\n  bad: pass\npropositions:\n  disallowed_content:\n    description: d\n    threshold: 0.5\n  apology:\n    description: a\nresponse_types:\n  comply:\n    classes:\n      good: { disallowed_content: false }\n      bad: { disallowed_content: true }\n  refuse:\n    classes:\n      good: { apology: true }\n      bad: { apology: false }\nresponse_type_prediction:\n  # why\n  min_probability: 0.6\n  otherwise: comply\n  confident: { refuse: 0.7 }\n";
        let point = OperatingPoint { disallowed_threshold: 0.35, refused_disallowed_threshold: 0.2, confident: 0.97 };
        let out = replace_operating_points(policy, point, "test rows").unwrap();
        assert!(out.starts_with("# head\n") && out.contains("  # why\n"), "{out}");
        assert!(out.contains("  # calibrated: test rows\n  confident: { refuse: 0.97 }\n"), "{out}");
        assert_eq!(out.matches("confident:").count(), 1, "{out}");
        let p = Policy::from_yaml(&out, "t").unwrap();
        assert_eq!(p.propositions()[0].threshold, 0.35);
        assert_eq!(p.propositions()[0].by_response_type, vec![0.35, 0.2]);
        assert!(out.contains("    threshold: 0.35\n    threshold_by_response_type: { refuse: 0.2 }\n"), "{out}");
        assert_eq!(p.prediction().unwrap().confident, vec![0.6, 0.97]);
        // Twice gives the same file: the earlier choice is replaced, not stacked.
        assert_eq!(replace_operating_points(&out, point, "test rows").unwrap(), out);
        let no_prediction = policy.split("response_type_prediction").next().unwrap();
        assert!(matches!(replace_operating_points(no_prediction, point, "x"), Err(WriteError::Missing(_))));
    }
}
