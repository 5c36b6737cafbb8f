//! Which jobs a command is about: all of them, those with a tag, or the
//! children of a job (by `parent` in meta.json). Shared by `-W`, the
//! `--tag`/`--children` listing and `--export`.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use nrvna_core::meta::valid_tag;
use nrvna_core::{JobId, JobView, Workspace};

/// A selection of jobs. With both a tag and a parent, a job must match both.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub tag: Option<String>,
    pub parent: Option<JobId>,
}

impl Scope {
    pub fn from_args(tag: Option<&str>, children: Option<&str>) -> Result<Scope> {
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(anyhow!(
                    "--tag {t:?} is not a tag: tags are 1-64 characters from [A-Za-z0-9_-]"
                ));
            }
        }
        let parent = children
            .map(|p| JobId::parse(p).map_err(|e| anyhow!("--children {p:?} is not a job id: {e}")))
            .transpose()?;
        Ok(Scope {
            tag: tag.map(str::to_owned),
            parent,
        })
    }

    pub fn tagged(tag: &str) -> Scope {
        Scope {
            tag: Some(tag.to_owned()),
            parent: None,
        }
    }

    pub fn is_all(&self) -> bool {
        self.tag.is_none() && self.parent.is_none()
    }

    /// Words for messages: "with tag T", "children of ID", "in WS".
    pub fn describe(&self) -> String {
        match (&self.tag, &self.parent) {
            (Some(t), Some(p)) => format!("with tag {t} and parent {p}"),
            (Some(t), None) => format!("with tag {t}"),
            (None, Some(p)) => format!("with parent {p}"),
            (None, None) => "in the workspace".into(),
        }
    }

    /// Whether a job with this meta.json is in scope. A job whose meta.json
    /// is missing or invalid is in no tag's or parent's scope.
    pub fn matches_meta(&self, meta: &nrvna_core::Meta) -> bool {
        self.tag.as_ref().is_none_or(|t| meta.tags.iter().any(|x| x == t))
            && self.parent.as_ref().is_none_or(|p| meta.parent.as_ref() == Some(p))
    }
}

/// Remembers which jobs are in scope: tags and parents never change after
/// submit, so a long wait reads each meta.json once, not on every wake.
#[derive(Debug, Default)]
pub struct ScopeCache {
    known: HashMap<JobId, bool>,
}

impl ScopeCache {
    /// Every published job in scope, sorted by id. A job that moves while
    /// it is read (claimed, finished, cancelled) is followed, not dropped.
    pub fn jobs(&mut self, ws: &Workspace, scope: &Scope) -> Vec<JobView> {
        let mut out = Vec::new();
        for mut j in ws.all_jobs() {
            let m = match self.known.get(&j.id) {
                Some(&m) => m,
                None if scope.is_all() => true,
                None => {
                    let meta = j.meta_following(ws);
                    let m = matches!(&meta, Ok(Some(meta)) if scope.matches_meta(meta));
                    // A job with an unreadable meta.json may be mid-write by
                    // an older tool: ask again next time rather than remember "no".
                    if m || matches!(meta, Ok(Some(_))) {
                        self.known.insert(j.id.clone(), m);
                    }
                    m
                }
            };
            if m {
                out.push(j);
            }
        }
        out
    }
}
