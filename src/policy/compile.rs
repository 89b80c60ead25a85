//! Validation of an [`UninitializedPolicy`] into a [`Policy`].

use super::error::yaml_path_at;
use super::raw::{UninitializedAction, UninitializedLiterals, UninitializedPolicy};
use super::*;
use indexmap::IndexMap;
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Rules over at most this many distinct simple propositions are checked on every
/// assignment (2^24 evaluations at worst, well under a second); beyond that a fixed
/// pseudo-random sample of assignments is checked.
const EXHAUSTIVE_LIMIT: usize = 24;
const SAMPLED_ASSIGNMENTS: u64 = 1 << 22;

pub(super) fn compile(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let raw: UninitializedPolicy = serde_saphyr::from_str(text).map_err(|e| parse_error(&e, text, origin))?;
    let mut cx = Compiler { origin, problems: Vec::new() };
    let policy = cx.policy(raw, text);
    if cx.problems.is_empty() { Ok(policy) } else { Err(PolicyError::Invalid(cx.problems)) }
}

fn parse_error(error: &serde_saphyr::Error, text: &str, origin: &str) -> PolicyError {
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    let rendered = error.to_string().replace("<input>", origin);
    // The first line repeats the location; the rest is a source snippet with a caret.
    let mut lines = rendered.lines();
    let headline = lines.next().unwrap_or_default();
    let message = headline
        .strip_prefix("error: ")
        .map(|rest| rest.split_once(": ").map_or(rest, |(_, m)| m))
        .unwrap_or(headline)
        .to_string();
    PolicyError::Parse {
        problem: Problem { file: origin.to_string(), line, column, field: yaml_path_at(text, line), message },
        snippet: lines.collect::<Vec<_>>().join("\n"),
    }
}

struct Compiler<'a> {
    origin: &'a str,
    problems: Vec<Problem>,
}

/// Where a literal name resolves to before derived propositions are indexed.
type Names = HashMap<String, Atom>;

impl Compiler<'_> {
    fn problem(&mut self, at: Location, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.origin.to_string(),
            line: at.line(),
            column: at.column(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn policy(&mut self, raw: UninitializedPolicy, text: &str) -> Policy {
        if raw.policy.value.trim().is_empty() {
            self.problem(raw.policy.referenced, "policy", "the policy name is empty");
        }
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        let version = match &raw.version {
            Some(v) if v.value.trim().is_empty() => {
                self.problem(
                    v.referenced,
                    "version",
                    "the version is empty; leave it out to use the content hash alone",
                );
                hash[..8].to_string()
            }
            Some(v) => format!("{}+{}", v.value.trim(), &hash[..8]),
            None => hash[..8].to_string(),
        };

        let classes: Vec<ClassInfo> = raw
            .classes
            .iter()
            .map(|(name, description)| ClassInfo { name: name.clone(), description: description.value.clone() })
            .collect();
        if classes.is_empty() {
            self.problem(raw.policy.referenced, "classes", "a policy needs at least one class");
        }

        let mut propositions = self.propositions(&raw);
        let mut names: Names =
            propositions.iter().enumerate().map(|(i, p)| (p.name.clone(), Atom::Simple(i))).collect();
        for (i, (name, d)) in raw.derived.iter().enumerate() {
            if names.contains_key(name) {
                self.problem(
                    d.referenced,
                    format!("derived.{name}"),
                    format!("`{name}` is already a simple proposition"),
                );
            } else {
                names.insert(name.clone(), Atom::Derived(i));
            }
        }
        let derived: Vec<DerivedProposition> = raw
            .derived
            .iter()
            .map(|(name, d)| DerivedProposition {
                name: name.clone(),
                description: d.value.description.clone(),
                all: self.literals(&d.value.all, &names, &format!("derived.{name}.all"), d.referenced),
            })
            .collect();
        let derived_order = self.dependency_order(&derived, &raw);

        let default_actions = self.actions(&raw.actions, &classes, "actions");
        let mut response_types = Vec::new();
        for (name, rt) in &raw.response_types {
            if let Some(rt) = self.response_type(name, rt, &classes, &default_actions, &propositions, &names) {
                response_types.push(rt);
            }
        }
        if raw.response_types.is_empty() {
            self.problem(raw.policy.referenced, "response_types", "a policy needs at least one response type");
        }
        self.check_labels_unique(&raw);
        let budget = self.budget(&raw);
        let streaming = self.streaming(&raw);
        let input_check = self.input_check(&raw, &response_types);
        let prediction = self.prediction(&raw, &response_types);
        self.thresholds_by_response_type(&raw, &mut propositions, &response_types);

        let policy = Policy {
            name: raw.policy.value.trim().to_string(),
            version,
            description: raw.description.clone().unwrap_or_default(),
            source: None,
            propositions,
            derived,
            derived_order,
            classes,
            response_types,
            budget,
            streaming,
            input_check,
            prediction,
        };
        if self.problems.is_empty() {
            for (rt, raw_rt) in policy.response_types.iter().zip(raw.response_types.values()) {
                self.check_partition(&policy, rt, raw_rt);
            }
        }
        policy
    }

    fn propositions(&mut self, raw: &UninitializedPolicy) -> Vec<Proposition> {
        if raw.propositions.is_empty() {
            self.problem(raw.policy.referenced, "propositions", "a policy needs at least one proposition");
        }
        let mut out = Vec::new();
        for (name, p) in &raw.propositions {
            let field = format!("propositions.{name}");
            if !valid_name(name) {
                self.problem(p.referenced, &field, "names use letters, digits and `_` only");
            }
            let threshold = match &p.value.threshold {
                Some(t) if !(0.0..=1.0).contains(&t.value) || !t.value.is_finite() => {
                    self.problem(
                        t.referenced,
                        format!("{field}.threshold"),
                        format!("threshold {} is not in [0, 1]", t.value),
                    );
                    0.5
                }
                Some(t) => t.value,
                None => 0.5,
            };
            let head = match &p.value.head {
                Some(h) if h.value.trim().is_empty() => {
                    self.problem(h.referenced, format!("{field}.head"), "the head name is empty");
                    name.clone()
                }
                Some(h) => h.value.clone(),
                None => name.clone(),
            };
            out.push(Proposition {
                name: name.clone(),
                description: p.value.description.trim_end().to_string(),
                head,
                threshold,
                // Resolved against the response types once they are compiled.
                by_response_type: Vec::new(),
            });
        }
        out
    }

    /// `propositions.*.threshold_by_response_type`: names of response types, thresholds in [0, 1].
    fn thresholds_by_response_type(
        &mut self,
        raw: &UninitializedPolicy,
        propositions: &mut [Proposition],
        response_types: &[ResponseType],
    ) {
        for (prop, raw_prop) in propositions.iter_mut().zip(raw.propositions.values()) {
            let by_type = &raw_prop.value.threshold_by_response_type;
            if by_type.is_empty() {
                continue;
            }
            let mut thresholds = vec![prop.threshold; response_types.len()];
            for (name, t) in by_type {
                let field = format!("propositions.{}.threshold_by_response_type.{name}", prop.name);
                match response_types.iter().position(|rt| &rt.name == name) {
                    None => self.problem(t.referenced, &field, format!("unknown response type `{name}`")),
                    Some(_) if !(0.0..=1.0).contains(&t.value) || !t.value.is_finite() => {
                        self.problem(t.referenced, &field, format!("threshold {} is not in [0, 1]", t.value))
                    }
                    Some(i) => thresholds[i] = t.value,
                }
            }
            prop.by_response_type = thresholds;
        }
    }

    fn literals(&mut self, raw: &UninitializedLiterals, names: &Names, field: &str, at: Location) -> Vec<Literal> {
        if raw.is_empty() {
            self.problem(at, field, "a rule needs at least one literal");
        }
        let mut out = Vec::new();
        for (name, value) in raw {
            match names.get(name) {
                Some(&atom) => out.push(Literal { atom, value: value.value }),
                None => {
                    let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    let hint = closest(name, &known).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
                    self.problem(
                        value.referenced,
                        format!("{field}.{name}"),
                        format!("unknown proposition `{name}`{hint}"),
                    );
                }
            }
        }
        out
    }

    /// Topological order of derived propositions; reports each cycle once.
    fn dependency_order(&mut self, derived: &[DerivedProposition], raw: &UninitializedPolicy) -> Vec<usize> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        fn visit(
            i: usize,
            derived: &[DerivedProposition],
            marks: &mut [Mark],
            order: &mut Vec<usize>,
            stack: &mut Vec<usize>,
        ) -> Result<(), Vec<usize>> {
            match marks[i] {
                Mark::Done => return Ok(()),
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                    return Err(stack[start..].to_vec());
                }
                Mark::New => {}
            }
            marks[i] = Mark::Active;
            stack.push(i);
            for lit in &derived[i].all {
                if let Atom::Derived(j) = lit.atom {
                    visit(j, derived, marks, order, stack)?;
                }
            }
            stack.pop();
            marks[i] = Mark::Done;
            order.push(i);
            Ok(())
        }
        let mut marks = vec![Mark::New; derived.len()];
        let mut order = Vec::with_capacity(derived.len());
        for i in 0..derived.len() {
            let mut stack = Vec::new();
            if let Err(cycle) = visit(i, derived, &mut marks, &mut order, &mut stack) {
                let names: Vec<&str> = cycle.iter().chain(cycle.first()).map(|&c| derived[c].name.as_str()).collect();
                let first = &derived[cycle[0]].name;
                let at = raw.derived.get(first).map_or(raw.policy.referenced, |d| d.referenced);
                self.problem(
                    at,
                    format!("derived.{first}"),
                    format!("derived propositions form a cycle: {}", names.join(" -> ")),
                );
                // Report each cycle once and keep validating the rest of the policy.
                for mark in marks.iter_mut().filter(|m| **m == Mark::Active) {
                    *mark = Mark::Done;
                }
            }
        }
        order
    }

    fn actions(
        &mut self,
        raw: &IndexMap<String, Spanned<UninitializedAction>>,
        classes: &[ClassInfo],
        field: &str,
    ) -> IndexMap<String, Action> {
        let mut out = IndexMap::new();
        for (class, action) in raw {
            let f = format!("{field}.{class}");
            if !classes.iter().any(|c| &c.name == class) {
                self.problem(action.referenced, &f, format!("unknown class `{class}`"));
                continue;
            }
            if let Some(a) = self.action(action, &f) {
                out.insert(class.clone(), a);
            }
        }
        out
    }

    fn action(&mut self, raw: &Spanned<UninitializedAction>, field: &str) -> Option<Action> {
        let at = raw.referenced;
        let p = &raw.value.params;
        let name = raw.value.name.as_str();
        let allowed: &[&str] = match name {
            "pass" | "fallback" => &[],
            "regenerate" => &["max_attempts", "guidance", "temperature", "exhausted"],
            "best_of_n" => &["n", "guidance", "temperature", "exhausted"],
            "beam_search" => {
                &["beam_width", "expansions", "max_steps", "step_tokens", "guidance", "temperature", "exhausted"]
            }
            "block" => &["code", "message"],
            other => {
                self.problem(
                    at,
                    field,
                    format!(
                        "unknown action `{other}` (expected pass, regenerate, best_of_n, beam_search, fallback or block)"
                    ),
                );
                return None;
            }
        };
        let given = [
            ("max_attempts", p.max_attempts.is_some()),
            ("n", p.n.is_some()),
            ("beam_width", p.beam_width.is_some()),
            ("expansions", p.expansions.is_some()),
            ("max_steps", p.max_steps.is_some()),
            ("step_tokens", p.step_tokens.is_some()),
            ("guidance", p.guidance.is_some()),
            ("temperature", p.temperature.is_some()),
            ("code", p.code.is_some()),
            ("message", p.message.is_some()),
            ("exhausted", p.exhausted.is_some()),
        ];
        for (param, present) in given {
            if present && !allowed.contains(&param) {
                self.problem(at, format!("{field}.{name}.{param}"), format!("`{name}` takes no `{param}`"));
            }
        }
        if let Some(t) = p.temperature
            && !(0.0..=2.0).contains(&t)
        {
            self.problem(at, format!("{field}.{name}.temperature"), format!("temperature {t} is not in [0, 2]"));
        }
        Some(match name {
            "pass" => Action::Pass,
            "fallback" => Action::Fallback,
            "regenerate" => {
                let max_attempts = p.max_attempts.unwrap_or(2);
                if !(1..=10).contains(&max_attempts) {
                    self.problem(
                        at,
                        format!("{field}.regenerate.max_attempts"),
                        format!("max_attempts {max_attempts} is not in 1..=10"),
                    );
                }
                let exhausted = self.exhausted(p.exhausted.as_deref(), at, field);
                Action::Regenerate {
                    max_attempts,
                    guidance: p.guidance.unwrap_or(true),
                    temperature: p.temperature,
                    exhausted,
                }
            }
            "best_of_n" => {
                let n = p.n.unwrap_or(4);
                if !(2..=16).contains(&n) {
                    self.problem(at, format!("{field}.best_of_n.n"), format!("n {n} is not in 2..=16"));
                }
                Action::BestOfN {
                    n,
                    guidance: p.guidance.unwrap_or(false),
                    temperature: p.temperature,
                    exhausted: self.exhausted(p.exhausted.as_deref(), at, field),
                }
            }
            "beam_search" => {
                let mut bounded =
                    |param: &str, value: Option<u32>, default: u32, range: std::ops::RangeInclusive<u32>| {
                        let v = value.unwrap_or(default);
                        if !range.contains(&v) {
                            self.problem(
                                at,
                                format!("{field}.beam_search.{param}"),
                                format!("{param} {v} is not in {}..={}", range.start(), range.end()),
                            );
                        }
                        v
                    };
                let beam_width = bounded("beam_width", p.beam_width, 2, 1..=8);
                let expansions = bounded("expansions", p.expansions, 2, 1..=8);
                let max_steps = bounded("max_steps", p.max_steps, 4, 1..=16);
                let step_tokens = bounded("step_tokens", p.step_tokens, 48, 8..=1024);
                if beam_width * expansions < 2 {
                    self.problem(
                        at,
                        format!("{field}.beam_search"),
                        "beam_width * expansions must be at least 2 (one continuation per step is no search)",
                    );
                }
                Action::BeamSearch {
                    beam_width,
                    expansions,
                    max_steps,
                    step_tokens,
                    guidance: p.guidance.unwrap_or(true),
                    temperature: p.temperature,
                    exhausted: self.exhausted(p.exhausted.as_deref(), at, field),
                }
            }
            _ => Action::Block {
                code: p.code.clone().unwrap_or_else(|| "rulegate_policy_violation".to_string()),
                message: p
                    .message
                    .clone()
                    .unwrap_or_else(|| "The response was blocked by the gateway's content policy.".to_string()),
            },
        })
    }

    fn exhausted(&mut self, value: Option<&str>, at: Location, field: &str) -> Exhausted {
        match value {
            None | Some("best") => Exhausted::Best,
            Some("fallback") => Exhausted::Fallback,
            Some("block") => Exhausted::Block,
            Some(other) => {
                self.problem(
                    at,
                    format!("{field}.exhausted"),
                    format!("unknown value `{other}` (expected best, fallback or block)"),
                );
                Exhausted::Best
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn response_type(
        &mut self,
        name: &str,
        raw: &Spanned<super::raw::UninitializedResponseType>,
        classes: &[ClassInfo],
        default_actions: &IndexMap<String, Action>,
        propositions: &[Proposition],
        names: &Names,
    ) -> Option<ResponseType> {
        let field = format!("response_types.{name}");
        let at = raw.referenced;
        let rt = &raw.value;
        if !valid_name(name) {
            self.problem(at, &field, "names use letters, digits and `_` only");
        }

        for (class, rule) in &rt.classes {
            if !classes.iter().any(|c| &c.name == class) {
                self.problem(
                    rule.referenced,
                    format!("{field}.classes.{class}"),
                    format!("unknown class `{class}` (declare it under `classes`)"),
                );
            }
        }
        let order: Vec<String> = match &rt.class_order {
            Some(order) => {
                let mut sorted = order.value.clone();
                sorted.sort();
                let mut keys: Vec<String> = rt.classes.keys().cloned().collect();
                keys.sort();
                if sorted != keys {
                    self.problem(
                        order.referenced,
                        format!("{field}.class_order"),
                        "class_order must list exactly the classes that have rules, each once",
                    );
                }
                order.value.clone()
            }
            None => classes.iter().filter(|c| rt.classes.contains_key(&c.name)).map(|c| c.name.clone()).collect(),
        };
        if rt.classes.is_empty() {
            self.problem(at, format!("{field}.classes"), "a response type needs at least one class rule");
        }

        let overrides = self.actions(&rt.actions, classes, &format!("{field}.actions"));
        for class in rt.actions.keys() {
            if !rt.classes.contains_key(class) && classes.iter().any(|c| &c.name == class) {
                let at = rt.actions[class].referenced;
                self.problem(
                    at,
                    format!("{field}.actions.{class}"),
                    format!("`{class}` has no rule in this response type"),
                );
            }
        }

        let mut rules = Vec::new();
        for class in &order {
            let Some(rule) = rt.classes.get(class) else { continue };
            let Some(class_index) = classes.iter().position(|c| &c.name == class) else { continue };
            let literals = self.literals(&rule.value, names, &format!("{field}.classes.{class}"), rule.referenced);
            let action = match overrides.get(class).or_else(|| default_actions.get(class)) {
                Some(a) => a.clone(),
                None => {
                    self.problem(
                        rule.referenced,
                        format!("{field}.actions.{class}"),
                        format!("no action for class `{class}`: add it under `actions` or `{field}.actions`"),
                    );
                    Action::Pass
                }
            };
            let needs_fallback = matches!(
                action,
                Action::Fallback
                    | Action::Regenerate { exhausted: Exhausted::Fallback, .. }
                    | Action::BestOfN { exhausted: Exhausted::Fallback, .. }
                    | Action::BeamSearch { exhausted: Exhausted::Fallback, .. }
            );
            if needs_fallback && rt.fallback.as_deref().is_none_or(|f| f.trim().is_empty()) {
                self.problem(
                    rule.referenced,
                    format!("{field}.fallback"),
                    format!("class `{class}` uses the fallback action but the response type has no `fallback` text"),
                );
            }
            rules.push(ClassRule { class: class_index, name: class.clone(), rule: literals, action });
        }

        let weights = self.weights(rt.weights.as_ref(), propositions, &rules, &field);
        let model_label = match &rt.model_label {
            Some(l) if l.value.trim().is_empty() => {
                self.problem(l.referenced, format!("{field}.model_label"), "the model label is empty");
                name.to_string()
            }
            Some(l) => l.value.clone(),
            None => name.to_string(),
        };
        Some(ResponseType {
            name: name.to_string(),
            description: rt.description.clone().unwrap_or_default(),
            model_label,
            aliases: rt.aliases.iter().map(|a| a.value.clone()).collect(),
            categories: rt.categories.iter().map(|c| c.value.clone()).collect(),
            classes: rules,
            weights,
            guidance: rt.guidance.clone().filter(|g| !g.trim().is_empty()),
            fallback: rt.fallback.clone().filter(|f| !f.trim().is_empty()),
        })
    }

    fn weights(
        &mut self,
        raw: Option<&Spanned<super::raw::UninitializedWeights>>,
        propositions: &[Proposition],
        rules: &[ClassRule],
        field: &str,
    ) -> Weights {
        let mut w = Weights {
            bias: 0.0,
            propositions: vec![0.0; propositions.len()],
            classes: vec![0.0; rules.len()],
            source: None,
        };
        let Some(raw) = raw else { return w };
        let f = format!("{field}.weights");
        if !raw.value.bias.is_finite() {
            self.problem(raw.referenced, format!("{f}.bias"), "the bias is not a finite number");
        }
        w.bias = raw.value.bias;
        w.source = raw.value.source.clone();
        for (name, value) in &raw.value.propositions {
            match propositions.iter().position(|p| &p.name == name) {
                Some(i) if value.value.is_finite() => w.propositions[i] = value.value,
                Some(_) => self.problem(
                    value.referenced,
                    format!("{f}.propositions.{name}"),
                    "the weight is not a finite number",
                ),
                None => self.problem(
                    value.referenced,
                    format!("{f}.propositions.{name}"),
                    format!("unknown proposition `{name}`"),
                ),
            }
        }
        for (name, value) in &raw.value.classes {
            match rules.iter().position(|c| &c.name == name) {
                Some(i) if value.value.is_finite() => w.classes[i] = value.value,
                Some(_) => {
                    self.problem(value.referenced, format!("{f}.classes.{name}"), "the weight is not a finite number")
                }
                None => self.problem(
                    value.referenced,
                    format!("{f}.classes.{name}"),
                    format!("`{name}` is not a class of this response type"),
                ),
            }
        }
        w
    }

    fn budget(&mut self, raw: &UninitializedPolicy) -> Budget {
        let mut budget = Budget::default();
        let Some(b) = &raw.budget else { return budget };
        if let Some(n) = b.value.max_attempts {
            if !(1..=20).contains(&n) {
                self.problem(b.referenced, "budget.max_attempts", format!("max_attempts {n} is not in 1..=20"));
            }
            budget.max_attempts = n;
        }
        if let Some(n) = b.value.max_candidates {
            if !(1..=32).contains(&n) {
                self.problem(b.referenced, "budget.max_candidates", format!("max_candidates {n} is not in 1..=32"));
            }
            budget.max_candidates = n;
        }
        if let Some(ms) = b.value.deadline_ms {
            if ms == 0 {
                self.problem(b.referenced, "budget.deadline_ms", "the deadline must be positive");
            }
            budget.deadline = std::time::Duration::from_millis(ms);
        }
        budget
    }

    fn streaming(&mut self, raw: &UninitializedPolicy) -> HoldBack {
        let Some(s) = &raw.streaming else { return HoldBack::Buffer };
        let chars = match &s.value.window_chars {
            Some(w) if w.value < 16 => {
                self.problem(
                    w.referenced,
                    "streaming.window_chars",
                    "windows under 16 characters give the model too little to judge",
                );
                w.value
            }
            Some(w) => w.value,
            None => 200,
        };
        match s.value.mode.as_ref().map(|m| (m.value.as_str(), m.referenced)) {
            None | Some(("buffer", _)) => HoldBack::Buffer,
            Some(("window", _)) => HoldBack::Window { chars },
            Some(("passthrough", _)) => HoldBack::Passthrough,
            Some((other, at)) => {
                self.problem(
                    at,
                    "streaming.mode",
                    format!("unknown mode `{other}` (expected buffer, window or passthrough)"),
                );
                HoldBack::Buffer
            }
        }
    }

    fn prediction(&mut self, raw: &UninitializedPolicy, response_types: &[ResponseType]) -> Option<Prediction> {
        let p = raw.response_type_prediction.as_ref()?;
        let min_probability = match &p.value.min_probability {
            Some(m) if !(0.0..=1.0).contains(&m.value) => {
                self.problem(
                    m.referenced,
                    "response_type_prediction.min_probability",
                    format!("{} is not in [0, 1]", m.value),
                );
                0.5
            }
            Some(m) => m.value,
            None => 0.5,
        };
        let Some(otherwise) = &p.value.otherwise else {
            self.problem(
                p.referenced,
                "response_type_prediction.otherwise",
                "name the response type used below min_probability",
            );
            return None;
        };
        let mut confident = vec![min_probability; response_types.len()];
        for (name, p) in &p.value.confident {
            let field = format!("response_type_prediction.confident.{name}");
            match response_types.iter().position(|rt| &rt.name == name) {
                None => self.problem(p.referenced, &field, format!("unknown response type `{name}`")),
                Some(_) if !(0.0..=1.0).contains(&p.value) => {
                    self.problem(p.referenced, &field, format!("{} is not in [0, 1]", p.value))
                }
                Some(_) if p.value < min_probability => self.problem(
                    p.referenced,
                    &field,
                    format!("{} is below min_probability {min_probability}: it would never apply", p.value),
                ),
                Some(i) => confident[i] = p.value,
            }
        }
        match response_types.iter().position(|rt| rt.name == otherwise.value) {
            Some(index) => Some(Prediction { min_probability, otherwise: index, confident }),
            None => {
                self.problem(
                    otherwise.referenced,
                    "response_type_prediction.otherwise",
                    format!("unknown response type `{}`", otherwise.value),
                );
                None
            }
        }
    }

    fn input_check(&mut self, raw: &UninitializedPolicy, response_types: &[ResponseType]) -> Option<InputCheck> {
        let check = raw.input_check.as_ref()?;
        if check.value.enabled == Some(false) {
            return None;
        }
        let min_probability = match &check.value.min_probability {
            Some(p) if !(0.0..=1.0).contains(&p.value) => {
                self.problem(p.referenced, "input_check.min_probability", format!("{} is not in [0, 1]", p.value));
                0.5
            }
            Some(p) => p.value,
            None => 0.5,
        };
        let mut actions = vec![None; response_types.len()];
        for (name, action) in &check.value.actions {
            let field = format!("input_check.actions.{name}");
            let Some(i) = response_types.iter().position(|rt| &rt.name == name) else {
                self.problem(action.referenced, &field, format!("unknown response type `{name}`"));
                continue;
            };
            let rt = &response_types[i];
            let p = &action.value.params;
            let parsed = match action.value.name.as_str() {
                "guidance" if rt.guidance.is_none() => {
                    self.problem(action.referenced, &field, format!("`guidance` needs response_types.{name}.guidance"));
                    None
                }
                "guidance" => Some(InputAction::Guidance),
                "fallback" if rt.fallback.is_none() => {
                    self.problem(action.referenced, &field, format!("`fallback` needs response_types.{name}.fallback"));
                    None
                }
                "fallback" => Some(InputAction::Fallback),
                "block" => Some(InputAction::Block {
                    code: p.code.clone().unwrap_or_else(|| "rulegate_input_blocked".to_string()),
                    message: p
                        .message
                        .clone()
                        .unwrap_or_else(|| "The request was blocked by the gateway's content policy.".to_string()),
                }),
                other => {
                    self.problem(
                        action.referenced,
                        &field,
                        format!("unknown input action `{other}` (expected guidance, fallback or block)"),
                    );
                    None
                }
            };
            actions[i] = parsed;
        }
        Some(InputCheck { min_probability, actions })
    }

    fn check_labels_unique(&mut self, raw: &UninitializedPolicy) {
        let mut seen: HashMap<String, String> = HashMap::new();
        for (name, rt) in &raw.response_types {
            let labels = std::iter::once(Spanned::new(name.clone(), rt.referenced, rt.defined))
                .chain(rt.value.aliases.iter().cloned())
                .chain(rt.value.categories.iter().cloned());
            for label in labels {
                let key = label.value.trim().to_ascii_lowercase();
                match seen.get(&key) {
                    Some(owner) if owner != name => {
                        self.problem(
                            label.referenced,
                            format!("response_types.{name}"),
                            format!("`{}` also names response type `{owner}`", label.value),
                        );
                    }
                    _ => {
                        seen.insert(key, name.clone());
                    }
                }
            }
        }
    }

    /// Proves that exactly one class rule of `rt` holds for every truth assignment of the
    /// simple propositions the rules use, and reports a counterexample otherwise.
    fn check_partition(
        &mut self,
        policy: &Policy,
        rt: &ResponseType,
        raw: &Spanned<super::raw::UninitializedResponseType>,
    ) {
        let mut used = Vec::new();
        for rule in &rt.classes {
            for lit in &rule.rule {
                collect_simple(policy, lit.atom, &mut used);
            }
        }
        used.sort_unstable();
        used.dedup();
        let mut simple = vec![false; policy.propositions.len()];
        let check = |bits: u64, simple: &mut Vec<bool>| -> Option<(Vec<usize>, Vec<bool>)> {
            for (k, &p) in used.iter().enumerate() {
                simple[p] = bits >> k & 1 == 1;
            }
            let derived = policy.derived_truth(simple);
            let holding: Vec<usize> = (0..rt.classes.len())
                .filter(|&c| rt.classes[c].rule.iter().all(|l| l.holds(simple, &derived)))
                .collect();
            (holding.len() != 1).then(|| (holding, simple.clone()))
        };
        let counterexample = if used.len() <= EXHAUSTIVE_LIMIT {
            (0..1u64 << used.len()).find_map(|bits| check(bits, &mut simple))
        } else {
            tracing::warn!(response_type = %rt.name, propositions = used.len(), "too many propositions to check every assignment; checking a sample");
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            (0..SAMPLED_ASSIGNMENTS).find_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                check(state, &mut simple)
            })
        };
        if let Some((holding, assignment)) = counterexample {
            let truths: Vec<String> =
                used.iter().map(|&p| format!("{}={}", policy.propositions[p].name, assignment[p])).collect();
            let message = if holding.is_empty() {
                format!("no class rule holds when {}", truths.join(", "))
            } else {
                let names: Vec<&str> = holding.iter().map(|&c| rt.classes[c].name.as_str()).collect();
                format!(
                    "classes {} all hold when {}; class rules must not overlap",
                    names.join(" and "),
                    truths.join(", ")
                )
            };
            self.problem(raw.referenced, format!("response_types.{}.classes", rt.name), message);
        }
    }
}

fn collect_simple(policy: &Policy, atom: Atom, out: &mut Vec<usize>) {
    match atom {
        Atom::Simple(i) => out.push(i),
        Atom::Derived(d) => {
            for lit in &policy.derived[d].all {
                collect_simple(policy, lit.atom, out);
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The known name closest to `name` by edit distance, if it is close enough to be a typo.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, &cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    known.iter().map(|k| (distance(name, k), *k)).filter(|&(d, k)| d <= 3.max(k.len() / 4)).min().map(|(_, k)| k)
}
