//! From a decision log to rows for people to label (`rulegate review`): each logged request
//! that kept its text becomes a `rulegate eval --task decision` row with an empty `label`.
//! Once labelled (`true`: the gateway should act on this answer), the same file is measured
//! by `rulegate eval --task decision --input` and chosen from by `rulegate calibrate`.

use serde::Serialize;

use crate::telemetry::decision_log::DecisionRecord;

/// Which logged requests to write.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReviewOptions {
    /// Only flagged lines (acted on, would have been, or disputed by the candidate).
    pub only_flagged: bool,
    /// At most this many rows, drawn at random (seeded) from those that qualify.
    pub sample: Option<usize>,
    /// Seed of that draw, so a review can be re-drawn identically.
    pub seed: u64,
}

/// One row to label, in the `rulegate eval --task` format plus what the guard decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewRow {
    /// The request id.
    pub id: String,
    /// `log/<action>`: what was (or, in shadow mode, would have been) done, so that
    /// `eval` reports the labelled rate per decision.
    pub source: String,
    /// The conversation as judged.
    pub prompt: Vec<crate::Message>,
    /// The completion as judged.
    pub completion: String,
    /// Empty: `true` if the gateway should act on this answer, `false` if it should not.
    pub label: Option<bool>,
    /// The class the live policy gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The live policy's version.
    pub policy_version: String,
}

/// What a review kept and why lines were left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReviewStats {
    /// Lines read.
    pub lines: usize,
    /// Lines left out as unflagged (with `only_flagged`).
    pub unflagged: usize,
    /// Lines left out because the log kept no text for them (`decision_log.text`).
    pub without_text: usize,
    /// Rows written.
    pub rows: usize,
}

/// The rows to label from `records`.
pub fn review_rows(records: &[DecisionRecord], options: ReviewOptions) -> (Vec<ReviewRow>, ReviewStats) {
    let mut stats = ReviewStats { lines: records.len(), ..ReviewStats::default() };
    let mut rows = Vec::new();
    for r in records {
        if options.only_flagged && !r.flagged {
            stats.unflagged += 1;
            continue;
        }
        let (Some(prompt), Some(completion)) = (&r.prompt, &r.completion) else {
            stats.without_text += 1;
            continue;
        };
        let action = r.shadow_action.as_deref().unwrap_or(&r.action);
        rows.push(ReviewRow {
            id: r.request_id.clone(),
            source: format!("log/{action}"),
            prompt: prompt.clone(),
            completion: completion.clone(),
            label: None,
            class: r.class.clone(),
            policy_version: r.policy_version.clone(),
        });
    }
    if let Some(n) = options.sample
        && rows.len() > n
    {
        let mut rng = fastrand::Rng::with_seed(options.seed);
        rng.shuffle(&mut rows);
        rows.truncate(n);
    }
    stats.rows = rows.len();
    (rows, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, flagged: bool, text: bool) -> DecisionRecord {
        DecisionRecord {
            request_id: id.into(),
            action: "pass".into(),
            shadow_action: flagged.then(|| "fallback".to_string()),
            flagged,
            prompt: text.then(|| vec![crate::Message::user("p")]),
            completion: text.then(|| "c".to_string()),
            ..DecisionRecord::default()
        }
    }

    #[test]
    fn only_lines_with_text_become_rows_and_the_rest_are_counted() {
        let log = vec![line("a", true, true), line("b", false, true), line("c", true, false)];
        let (rows, stats) = review_rows(&log, ReviewOptions::default());
        assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(rows[0].source, "log/fallback", "shadow mode names what enforce would have done");
        assert_eq!(rows[1].source, "log/pass");
        assert_eq!(rows[0].label, None);
        assert_eq!(stats, ReviewStats { lines: 3, unflagged: 0, without_text: 1, rows: 2 });
        let (rows, stats) = review_rows(&log, ReviewOptions { only_flagged: true, ..ReviewOptions::default() });
        assert_eq!(rows.len(), 1);
        assert_eq!(stats.unflagged, 1);
    }

    #[test]
    fn a_sample_is_a_seeded_subset() {
        let log: Vec<_> = (0..50).map(|i| line(&format!("r{i}"), i % 3 == 0, true)).collect();
        let opts = ReviewOptions { sample: Some(10), seed: 7, ..ReviewOptions::default() };
        let (a, _) = review_rows(&log, opts);
        let (b, _) = review_rows(&log, opts);
        assert_eq!(a.len(), 10);
        assert_eq!(a, b, "the same seed draws the same rows");
        let (c, _) = review_rows(&log, ReviewOptions { seed: 8, ..opts });
        assert_ne!(a, c);
    }

    #[test]
    fn a_row_reads_back_as_an_eval_row_with_its_label_missing() {
        let (rows, _) = review_rows(&[line("a", true, true)], ReviewOptions::default());
        let json = serde_json::to_string(&rows[0]).unwrap();
        let row = crate::dataset::parse_row(&json, 1).expect("an eval row");
        assert_eq!(row.label, None);
        assert_eq!(row.source.as_deref(), Some("log/fallback"));
        let labelled = json.replace("\"label\":null", "\"label\":true");
        assert_eq!(crate::dataset::parse_row(&labelled, 1).unwrap().label, Some(true));
    }
}
