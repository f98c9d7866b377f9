//! Topic templates: `sensors/{device}/{metric}` names the series a message belongs to.

use crate::wire::SeriesKey;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Device,
    Metric,
    /// `{anything_else}` or `+`: matches one level, value unused.
    Any,
}

/// A parsed topic template. Each `/`-separated level is a literal, `{device}`,
/// `{metric}` or another `{name}` that matches any single level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    segments: Vec<Segment>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("template must contain {{device}} and {{metric}} exactly once each")]
    MissingPlaceholder,
    #[error("template level `{0}` mixes text and a placeholder; use a whole level")]
    PartialPlaceholder(String),
    #[error("template must not be empty or contain empty levels")]
    Empty,
    #[error("topic `{topic}` does not match template `{template}`")]
    NoMatch { topic: String, template: String },
}

impl TopicTemplate {
    pub fn parse(template: &str) -> Result<Self, TopicError> {
        let mut segments = Vec::new();
        let (mut devices, mut metrics) = (0, 0);
        for level in template.split('/') {
            let seg = match level {
                "" => return Err(TopicError::Empty),
                "{device}" => {
                    devices += 1;
                    Segment::Device
                }
                "{metric}" => {
                    metrics += 1;
                    Segment::Metric
                }
                "+" => Segment::Any,
                l if l.starts_with('{') && l.ends_with('}') && l.len() > 2 => Segment::Any,
                l if l.contains('{') || l.contains('}') || l.contains('#') => {
                    return Err(TopicError::PartialPlaceholder(l.to_string()))
                }
                l => Segment::Literal(l.to_string()),
            };
            segments.push(seg);
        }
        if devices != 1 || metrics != 1 {
            return Err(TopicError::MissingPlaceholder);
        }
        Ok(Self {
            segments,
            source: template.to_string(),
        })
    }

    /// The MQTT subscription filter that covers every topic this template can match.
    pub fn filter(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                _ => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn series(&self, topic: &str) -> Result<SeriesKey, TopicError> {
        let no_match = || TopicError::NoMatch {
            topic: topic.to_string(),
            template: self.source.clone(),
        };
        let mut levels = levels(topic);
        let (mut device, mut metric) = ("", "");
        for seg in &self.segments {
            let level = levels.next().ok_or_else(no_match)?;
            if level.is_empty() {
                return Err(no_match());
            }
            match seg {
                Segment::Literal(l) if l != level => return Err(no_match()),
                Segment::Literal(_) | Segment::Any => {}
                Segment::Device => device = level,
                Segment::Metric => metric = level,
            }
        }
        if levels.next().is_some() {
            return Err(no_match());
        }
        Ok(SeriesKey::new(device, metric))
    }
}

/// `topic.split('/')` on bytes: once per message on the decode path, where the
/// char searcher cost more than the rest of topic matching. `/` is ASCII, so every
/// piece is still a `str`.
fn levels(topic: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(topic);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(template: &str, topic: &str, expected: Option<(&str, &str)>) {
        let t = TopicTemplate::parse(template).unwrap();
        let got = t.series(topic).ok();
        assert_eq!(
            got,
            expected.map(|(d, m)| SeriesKey::new(d, m)),
            "{template} vs {topic}"
        );
    }

    #[test]
    fn matches() {
        check(
            "sensors/{device}/{metric}",
            "sensors/dev1/temp",
            Some(("dev1", "temp")),
        );
        check("sensors/{device}/{metric}", "sensors/dev1", None);
        check("sensors/{device}/{metric}", "sensors/dev1/temp/x", None);
        check("sensors/{device}/{metric}", "other/dev1/temp", None);
        check("sensors/{device}/{metric}", "sensors//temp", None);
        check(
            "{site}/{metric}/{device}",
            "berlin/rh/d7",
            Some(("d7", "rh")),
        );
    }

    #[test]
    fn levels_split_like_str_split() {
        for topic in [
            "",
            "/",
            "a",
            "a/",
            "/a",
            "a//b",
            "sensors/dev1/temp",
            "ü/€/x",
        ] {
            assert_eq!(
                levels(topic).collect::<Vec<_>>(),
                topic.split('/').collect::<Vec<_>>(),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn filter_covers_template() {
        let t = TopicTemplate::parse("site/{x}/{device}/{metric}").unwrap();
        assert_eq!(t.filter(), "site/+/+/+");
    }

    #[test]
    fn bad_templates() {
        assert_eq!(
            TopicTemplate::parse("a/{device}"),
            Err(TopicError::MissingPlaceholder)
        );
        assert_eq!(
            TopicTemplate::parse("a//{device}/{metric}"),
            Err(TopicError::Empty)
        );
        assert!(matches!(
            TopicTemplate::parse("a/dev{device}/{metric}"),
            Err(TopicError::PartialPlaceholder(_))
        ));
    }
}
