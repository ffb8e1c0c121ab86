//! The query string of `/containerLogs`, as `kubectl logs` sends it through the API server
//! (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`, `limitBytes`, `previous`).

use std::collections::HashMap;

use jiff::Timestamp;

/// What the caller asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogQuery {
    /// Keep the stream open and send new lines as they are written.
    pub follow: bool,
    /// Only the last this many lines of what exists now.
    pub tail_lines: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<Timestamp>,
    /// Prefix each line with the time it was written.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
    /// The previous (terminated) instance instead of the current one.
    pub previous: bool,
}

impl LogQuery {
    /// Parses the parameters; unknown ones are ignored, as the kubelet does. `now` anchors
    /// `sinceSeconds`. The error names the parameter and what is wrong with it.
    pub fn parse(params: &HashMap<String, String>, now: Timestamp) -> Result<Self, String> {
        let flag = |name: &str| -> Result<bool, String> {
            match params.get(name).map(String::as_str) {
                None | Some("" | "false" | "0") => Ok(false),
                Some("true" | "1") => Ok(true),
                Some(other) => Err(format!("{name}={other:?} is not a boolean")),
            }
        };
        let count = |name: &str| -> Result<Option<u64>, String> {
            params
                .get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}={v:?} must be a non-negative integer"))
                })
                .transpose()
        };
        let since_seconds = count("sinceSeconds")?;
        let since_time = params
            .get("sinceTime")
            .map(|v| {
                v.parse::<Timestamp>()
                    .map_err(|e| format!("sinceTime={v:?} is not an RFC 3339 time: {e}"))
            })
            .transpose()?;
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err("sinceSeconds and sinceTime cannot be used together".into());
            }
            (Some(0), None) => return Err("sinceSeconds must be greater than 0".into()),
            (Some(secs), None) => Some(
                i64::try_from(secs)
                    .ok()
                    .and_then(|s| now.checked_sub(jiff::SignedDuration::from_secs(s)).ok())
                    .unwrap_or(Timestamp::MIN),
            ),
            (None, time) => time,
        };
        let limit_bytes = count("limitBytes")?;
        if limit_bytes == Some(0) {
            return Err("limitBytes must be greater than 0".into());
        }
        Ok(Self {
            follow: flag("follow")?,
            tail_lines: count("tailLines")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            since,
            timestamps: flag("timestamps")?,
            limit_bytes,
            previous: flag("previous")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<LogQuery, String> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LogQuery::parse(&params, Timestamp::from_second(1_000_000).unwrap())
    }

    #[test]
    fn kubectl_parameters_parse() {
        let q = parse(&[
            ("follow", "true"),
            ("tailLines", "10"),
            ("sinceSeconds", "60"),
            ("timestamps", "true"),
            ("limitBytes", "100"),
            ("previous", "false"),
        ])
        .unwrap();
        assert!(q.follow && q.timestamps && !q.previous);
        assert_eq!(q.tail_lines, Some(10));
        assert_eq!(q.limit_bytes, Some(100));
        assert_eq!(
            q.since,
            Some(Timestamp::from_second(1_000_000 - 60).unwrap())
        );
        let q = parse(&[("sinceTime", "2026-11-22T10:00:00Z")]).unwrap();
        assert_eq!(q.since, Some("2026-11-22T10:00:00Z".parse().unwrap()));
        assert_eq!(parse(&[]).unwrap(), LogQuery::default());
    }

    #[test]
    fn malformed_parameters_name_themselves() {
        for (pairs, needle) in [
            (&[("tailLines", "-1")][..], "tailLines"),
            (&[("sinceTime", "yesterday")][..], "sinceTime"),
            (&[("sinceSeconds", "0")][..], "sinceSeconds"),
            (&[("limitBytes", "x")][..], "limitBytes"),
            (&[("follow", "maybe")][..], "follow"),
            (
                &[("sinceSeconds", "5"), ("sinceTime", "2026-11-22T10:00:00Z")][..],
                "together",
            ),
        ] {
            let err = parse(pairs).unwrap_err();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }
}
