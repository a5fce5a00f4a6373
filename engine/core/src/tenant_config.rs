//! [`TenantConfigDoc`]: the tenant's configuration document, replicated to every
//! device of the tenant like a customer document, written only by the server.
//!
//! Owns: the document's schema, the rule sets admins install (a plugin build plus
//! the settings, holidays and time zone it runs with), the plugin components
//! themselves (so a phone holds what it needs to evaluate offline), the install
//! history, and which rule set is active.
//!
//! # Schema, version 1
//!
//! | key | Automerge type | meaning |
//! |---|---|---|
//! | `schema` | uint | `1` |
//! | `kind` | string | `tenant-config` |
//! | `tenant` | string | the tenant's id; never changes |
//! | `active` | string | id (hash) of the rule set in force |
//! | `rulesets` | map keyed by rule set id | each a JSON [`Ruleset`]; never edited |
//! | `components` | map keyed by component hash | the plugin's bytes; never edited |
//! | `installs` | map keyed by `<ms, 15 digits>-<rule set id>` | each a JSON [`Install`] |
//!
//! Rule sets and components are content-addressed and written once, so an upgrade
//! and a rollback are the same operation (install, then `active` points at it) and
//! every rule set a saved decision names stays readable for re-evaluation.

use std::collections::BTreeMap;

use automerge::{
    ActorId, AutoCommit, ObjType, ROOT, ReadDoc, ScalarValue, Value, transaction::Transactable,
};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::holidays::{self, HolidayError};
use crate::id::{TenantId, UserId};
use crate::plugin::{ContentHash, PluginRef, Setting};
use crate::result_type::{ResultCatalog, ResultTypeSpec};
use crate::time::Timestamp;
use crate::wire::RpcCall;

/// The schema version this build writes and reads.
pub const CONFIG_SCHEMA_VERSION: u64 = 1;
/// The `kind` of a tenant configuration document.
pub const CONFIG_KIND: &str = "tenant-config";

mod key {
    pub(super) const SCHEMA: &str = "schema";
    pub(super) const KIND: &str = "kind";
    pub(super) const TENANT: &str = "tenant";
    pub(super) const ACTIVE: &str = "active";
    pub(super) const RULESETS: &str = "rulesets";
    pub(super) const COMPONENTS: &str = "components";
    pub(super) const INSTALLS: &str = "installs";
}

/// A plugin build and everything it runs with in a tenant. Its id is the hash of
/// [`Ruleset::identity`], so two devices that name the same id ran the same rules on
/// the same settings, holidays and zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The plugin build.
    pub plugin: PluginRef,
    /// Its settings.
    pub settings: Vec<Setting>,
    /// Days off, sorted.
    pub holidays: Vec<NaiveDate>,
    /// The tenant's IANA time zone, e.g. `Asia/Tokyo`.
    pub time_zone: String,
    /// The result types the plugin declared with these settings.
    pub result_types: Vec<ResultTypeSpec>,
}

impl Ruleset {
    /// The bytes a rule set's id hashes: the component hash, settings, holidays and
    /// zone (the result types follow from them).
    pub fn identity(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Identity<'a> {
            component: &'a ContentHash,
            settings: &'a [Setting],
            holidays: &'a [NaiveDate],
            time_zone: &'a str,
        }
        serde_json::to_vec(&Identity {
            component: &self.plugin.hash,
            settings: &self.settings,
            holidays: &self.holidays,
            time_zone: &self.time_zone,
        })
        .unwrap_or_default()
    }

    /// The result types, as the form and the rules read them.
    pub fn catalog(&self) -> ResultCatalog {
        ResultCatalog::new(self.result_types.clone())
    }
}

/// One install (or upgrade, or rollback): which rule set became active, when, by
/// whom.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// The rule set.
    pub ruleset: ContentHash,
    /// When.
    pub at: Timestamp,
    /// The admin or owner.
    pub by: UserId,
}

/// A checked install, ready to publish: the rule set, its id and the plugin
/// component (made by the plugin host's install checks; publishing it is a
/// document edit, so it lives here where the sessions can do it).
#[derive(Debug, Clone)]
pub struct PreparedInstall {
    /// The rule set's id.
    pub id: ContentHash,
    /// The rule set.
    pub ruleset: Ruleset,
    /// The plugin component.
    pub component: Vec<u8>,
}

impl PreparedInstall {
    /// Publishes the rule set in `doc` and makes it active, as installed by `by`
    /// at `at`.
    pub fn publish(
        &self,
        doc: &mut TenantConfigDoc,
        by: &UserId,
        at: Timestamp,
    ) -> Result<(), CoreError> {
        let install = Install {
            ruleset: self.id,
            at,
            by: by.clone(),
        };
        doc.install(self.id, &self.ruleset, &self.component, &install)
    }
}

/// The configuration as every reader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantConfig {
    /// The rule set in force, if any was installed.
    pub active: Option<ContentHash>,
    /// Every rule set ever installed, by id.
    pub rulesets: BTreeMap<ContentHash, Ruleset>,
    /// Installs, oldest first.
    pub installs: Vec<Install>,
}

impl TenantConfig {
    /// The rule set in force, with its id.
    pub fn active_ruleset(&self) -> Option<(ContentHash, &Ruleset)> {
        let id = self.active?;
        self.rulesets.get(&id).map(|r| (id, r))
    }

    /// The result types in force (empty before any install).
    pub fn catalog(&self) -> ResultCatalog {
        self.active_ruleset()
            .map(|(_, r)| r.catalog())
            .unwrap_or_else(|| ResultCatalog::new(Vec::new()))
    }

    /// What `callsync admin plugin list` and the admin screen show: every rule
    /// set, the one most recently installed first, and the install history.
    pub fn listing(&self) -> PluginListing {
        let mut rulesets: Vec<RulesetListing> = self
            .rulesets
            .iter()
            .map(|(id, ruleset)| {
                let last = self.installs.iter().rev().find(|i| i.ruleset == *id);
                RulesetListing {
                    id: *id,
                    plugin: ruleset.plugin.clone(),
                    settings: ruleset.settings.clone(),
                    holidays: ruleset.holidays.len(),
                    time_zone: ruleset.time_zone.clone(),
                    result_types: ruleset.result_types.clone(),
                    active: self.active == Some(*id),
                    installed_at: last.map(|i| i.at),
                    installed_by: last.map(|i| i.by.clone()),
                }
            })
            .collect();
        rulesets.sort_by(|a, b| {
            (b.active, b.installed_at)
                .cmp(&(a.active, a.installed_at))
                .then(a.id.cmp(&b.id))
        });
        PluginListing {
            active: self.active,
            rulesets,
            installs: self.installs.clone(),
        }
    }
}

/// The installed rule sets and their history, as an admin reads them.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginListing {
    /// The rule set in force.
    pub active: Option<ContentHash>,
    /// Every rule set: the active one first, then the most recently installed.
    pub rulesets: Vec<RulesetListing>,
    /// Installs, oldest first.
    pub installs: Vec<Install>,
}

/// One installed rule set, as an admin reads it.
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RulesetListing {
    /// Its id.
    pub id: ContentHash,
    /// Its plugin build.
    pub plugin: PluginRef,
    /// The settings it runs with.
    pub settings: Vec<Setting>,
    /// How many days off it knows.
    pub holidays: usize,
    /// Its time zone.
    pub time_zone: String,
    /// The result types it declares.
    pub result_types: Vec<ResultTypeSpec>,
    /// Whether it is in force.
    pub active: bool,
    /// When it was last installed (an upgrade or a rollback installs again).
    pub installed_at: Option<Timestamp>,
    /// By whom.
    pub installed_by: Option<UserId>,
}

/// Why a `plugin-install` request could not even be built (nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallRequestError {
    /// A setting that is not `KEY=VALUE`.
    #[error("setting {0:?}: expected KEY=VALUE")]
    BadSetting(String),
    /// The holiday table does not parse.
    #[error("holiday table: {0}")]
    Holidays(#[from] HolidayError),
    /// Larger than one message may carry.
    #[error("the plugin file is {size} bytes; at most {max} can be sent")]
    FileTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No installed rule set has this id (or the prefix names several).
    #[error("no single installed rule set has id {0}")]
    UnknownRuleset(String),
    /// The configuration document does not read.
    #[error(transparent)]
    Config(#[from] CoreError),
}

impl InstallRequestError {
    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadSetting(_) => "bad-setting",
            Self::Holidays(_) => "bad-holidays",
            Self::FileTooLarge { .. } => "plugin-too-large",
            Self::UnknownRuleset(_) => "unknown-ruleset",
            Self::Config(e) => e.code(),
        }
    }

    /// The message in Japanese.
    pub fn message_ja(&self) -> String {
        match self {
            Self::BadSetting(text) => format!("設定「{text}」は KEY=VALUE の形ではありません"),
            Self::Holidays(e) => format!("休日の表を読み取れません: {}", e.message_ja()),
            Self::FileTooLarge { size, max } => {
                format!("プラグインが大きすぎます（{size} バイト、上限 {max} バイト）")
            }
            Self::UnknownRuleset(id) => format!("ルールセット {id} はインストールされていません"),
            Self::Config(e) => e.message_ja(),
        }
    }
}

/// The largest plugin file a `plugin-install` can carry: one message, less room
/// for the rest of the request.
pub const MAX_INSTALL_FILE_BYTES: usize = crate::wire::MAX_FRAME_BYTES - 256 * 1024;

/// The `plugin-install` request for a plugin file, its settings as `KEY=VALUE`
/// lines, a `date,name` holiday table (Japanese public holidays when `None`) and
/// the tenant's time zone: built here so the CLI and the admin screen send the
/// same request.
pub fn install_request(
    file: Vec<u8>,
    settings: &[String],
    holidays: Option<&str>,
    time_zone: &str,
) -> Result<RpcCall, InstallRequestError> {
    if file.len() > MAX_INSTALL_FILE_BYTES {
        return Err(InstallRequestError::FileTooLarge {
            size: file.len(),
            max: MAX_INSTALL_FILE_BYTES,
        });
    }
    let settings = settings
        .iter()
        .map(|pair| pair.trim())
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Setting {
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            }),
            _ => Err(InstallRequestError::BadSetting(
                pair.chars().take(80).collect(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let holidays = match holidays {
        Some(table) => holidays::parse(table)?,
        None => holidays::japan(),
    };
    Ok(RpcCall::PluginInstall {
        file,
        settings,
        holidays,
        time_zone: time_zone.trim().to_owned(),
    })
}

/// A tenant's configuration document.
#[derive(Debug, Clone)]
pub struct TenantConfigDoc {
    doc: AutoCommit,
    tenant: TenantId,
}

fn malformed(path: &str, reason: impl Into<String>) -> CoreError {
    CoreError::MalformedDocument {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

impl TenantConfigDoc {
    /// A new, empty configuration document for `tenant`, written by `actor`.
    pub fn create(tenant: &TenantId, at: Timestamp, actor: ActorId) -> Result<Self, CoreError> {
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(ROOT, key::SCHEMA, ScalarValue::Uint(CONFIG_SCHEMA_VERSION))?;
        doc.put(ROOT, key::KIND, CONFIG_KIND)?;
        doc.put(ROOT, key::TENANT, tenant.as_str())?;
        doc.put_object(ROOT, key::RULESETS, ObjType::Map)?;
        doc.put_object(ROOT, key::COMPONENTS, ObjType::Map)?;
        doc.put_object(ROOT, key::INSTALLS, ObjType::Map)?;
        doc.commit_with(
            automerge::transaction::CommitOptions::default().with_time(at.as_millis() / 1000),
        );
        Ok(Self {
            doc,
            tenant: tenant.clone(),
        })
    }

    /// Loads saved bytes, to be edited as `actor`.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, CoreError> {
        Self::from_automerge(AutoCommit::load(bytes)?.with_actor(actor))
    }

    /// Wraps an Automerge document after checking it is a configuration document
    /// this build reads.
    pub fn from_automerge(doc: AutoCommit) -> Result<Self, CoreError> {
        match doc.get(ROOT, key::SCHEMA)? {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Uint(CONFIG_SCHEMA_VERSION) => {}
                ScalarValue::Uint(found) => {
                    return Err(CoreError::UnsupportedSchema {
                        found: *found,
                        supported: CONFIG_SCHEMA_VERSION,
                    });
                }
                _ => return Err(malformed(key::SCHEMA, "not a number")),
            },
            _ => return Err(malformed(key::SCHEMA, "missing")),
        }
        if read_str(&doc, key::KIND)?.as_deref() != Some(CONFIG_KIND) {
            return Err(malformed(key::KIND, "not a tenant configuration"));
        }
        let tenant =
            read_str(&doc, key::TENANT)?.ok_or_else(|| malformed(key::TENANT, "missing"))?;
        let tenant = TenantId::new(tenant)?;
        Ok(Self { doc, tenant })
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The Automerge document, for sync and persistence.
    pub fn automerge_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The current heads.
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document, compacted.
    pub fn save(&mut self) -> Vec<u8> {
        // Never the changes waiting for a missing dependency: Automerge keeps them
        // by default, and a queued change under an actor and sequence number that
        // later get a real change would make the saved bytes unloadable.
        self.doc.save_with_options(automerge::SaveOptions {
            deflate: true,
            retain_orphans: false,
        })
    }

    /// Installs `ruleset` (id `id`) with its plugin's `component` and makes it the
    /// active one: the same operation for a first install, an upgrade and a
    /// rollback. What was installed before stays.
    pub fn install(
        &mut self,
        id: ContentHash,
        ruleset: &Ruleset,
        component: &[u8],
        install: &Install,
    ) -> Result<(), CoreError> {
        let rulesets = self.map(key::RULESETS)?;
        let components = self.map(key::COMPONENTS)?;
        let installs = self.map(key::INSTALLS)?;
        let id_text = id.to_string();
        if self.doc.get(&rulesets, &id_text)?.is_none() {
            let json = serde_json::to_string(ruleset)
                .map_err(|e| malformed(key::RULESETS, e.to_string()))?;
            self.doc.put(&rulesets, &id_text, json)?;
        }
        let component_key = ruleset.plugin.hash.to_string();
        if self.doc.get(&components, &component_key)?.is_none() {
            self.doc.put(
                &components,
                &component_key,
                ScalarValue::Bytes(component.to_vec()),
            )?;
        }
        let json =
            serde_json::to_string(install).map_err(|e| malformed(key::INSTALLS, e.to_string()))?;
        self.doc.put(
            &installs,
            format!("{:015}-{id_text}", install.at.as_millis().max(0)),
            json,
        )?;
        self.doc.put(ROOT, key::ACTIVE, id_text)?;
        self.doc.commit_with(
            automerge::transaction::CommitOptions::default()
                .with_time(install.at.as_millis() / 1000),
        );
        Ok(())
    }

    fn map(&self, name: &str) -> Result<automerge::ObjId, CoreError> {
        match self.doc.get(ROOT, name)? {
            Some((Value::Object(ObjType::Map), id)) => Ok(id),
            _ => Err(malformed(name, "missing")),
        }
    }

    /// The configuration. Entries that do not parse are skipped (a newer writer's
    /// data this build cannot read), never a panic.
    pub fn config(&self) -> Result<TenantConfig, CoreError> {
        let mut config = TenantConfig::default();
        let rulesets = self.map(key::RULESETS)?;
        for item in self.doc.map_range(&rulesets, ..) {
            let (Ok(id), Some(json)) = (item.key.parse::<ContentHash>(), str_ref(&item.value))
            else {
                continue;
            };
            if let Ok(ruleset) = serde_json::from_str::<Ruleset>(&json) {
                config.rulesets.insert(id, ruleset);
            }
        }
        let installs = self.map(key::INSTALLS)?;
        for item in self.doc.map_range(&installs, ..) {
            if let Some(install) =
                str_ref(&item.value).and_then(|json| serde_json::from_str::<Install>(&json).ok())
            {
                config.installs.push(install);
            }
        }
        config.active = read_str(&self.doc, key::ACTIVE)?.and_then(|text| text.parse().ok());
        Ok(config)
    }

    /// The `plugin-install` request that makes an installed rule set active again
    /// (a rollback): its plugin's component, settings, holidays and zone, as this
    /// document holds them. `id` is the rule set's id or a prefix naming one.
    pub fn reinstall_request(&self, id: &str) -> Result<RpcCall, InstallRequestError> {
        let config = self.config()?;
        let id = id.trim();
        let mut matching = config
            .rulesets
            .iter()
            .filter(|(ruleset_id, _)| !id.is_empty() && ruleset_id.to_string().starts_with(id));
        let (Some((_, ruleset)), None) = (matching.next(), matching.next()) else {
            return Err(InstallRequestError::UnknownRuleset(
                id.chars().take(64).collect(),
            ));
        };
        let file = self
            .component(&ruleset.plugin.hash)?
            .ok_or_else(|| InstallRequestError::UnknownRuleset(id.to_owned()))?;
        Ok(RpcCall::PluginInstall {
            file,
            settings: ruleset.settings.clone(),
            holidays: ruleset.holidays.clone(),
            time_zone: ruleset.time_zone.clone(),
        })
    }

    /// The plugin component with this hash, if the document holds it.
    pub fn component(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, CoreError> {
        let components = self.map(key::COMPONENTS)?;
        Ok(match self.doc.get(&components, hash.to_string())? {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Bytes(bytes) => Some(bytes.clone()),
                _ => None,
            },
            _ => None,
        })
    }
}

fn str_value(value: &automerge::Value<'_>) -> Option<String> {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(text) => Some(text.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn str_ref(value: &automerge::ValueRef<'_>) -> Option<String> {
    match value {
        automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(text)) => Some(text.to_string()),
        _ => None,
    }
}

fn read_str(doc: &AutoCommit, name: &str) -> Result<Option<String>, CoreError> {
    Ok(doc
        .get(ROOT, name)?
        .and_then(|(value, _)| str_value(&value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result_type::ResultCatalog;

    fn ruleset(version: &str, hash: u8) -> Ruleset {
        Ruleset {
            plugin: PluginRef {
                id: "standard".to_owned(),
                version: version.to_owned(),
                hash: ContentHash::from_bytes([hash; 32]),
            },
            settings: Vec::new(),
            holidays: vec![NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()],
            time_zone: "Asia/Tokyo".to_owned(),
            result_types: ResultCatalog::standard().types().to_vec(),
        }
    }

    #[test]
    fn installs_upgrades_and_rollbacks_keep_every_version_and_survive_a_reload() {
        let tenant = TenantId::new("acme").unwrap();
        let mut doc =
            TenantConfigDoc::create(&tenant, Timestamp::from_millis(1_000), ActorId::random())
                .unwrap();
        assert_eq!(doc.config().unwrap().active, None);
        let by = UserId::new("owner@acme.example").unwrap();
        let (v1, v2) = (ruleset("1.0.0", 1), ruleset("1.1.0", 2));
        let (id1, id2) = (
            ContentHash::from_bytes([11; 32]),
            ContentHash::from_bytes([22; 32]),
        );
        for (at, id, ruleset, component) in [
            (2_000, id1, &v1, b"one".as_slice()),
            (3_000, id2, &v2, b"two"),
            (4_000, id1, &v1, b"one"),
        ] {
            let install = Install {
                ruleset: id,
                at: Timestamp::from_millis(at),
                by: by.clone(),
            };
            doc.install(id, ruleset, component, &install).unwrap();
        }
        let reloaded = TenantConfigDoc::load(&doc.save(), ActorId::random()).unwrap();
        let config = reloaded.config().unwrap();
        assert_eq!(config.active, Some(id1), "rolled back to the first");
        assert_eq!(config.rulesets.len(), 2);
        assert_eq!(
            config
                .installs
                .iter()
                .map(|i| i.ruleset)
                .collect::<Vec<_>>(),
            [id1, id2, id1]
        );
        assert_eq!(
            reloaded.component(&v2.plugin.hash).unwrap().unwrap(),
            b"two"
        );
        assert_eq!(config.catalog().types().len(), 5);
    }

    #[test]
    fn the_listing_puts_the_rule_set_in_use_first_and_a_rollback_resends_what_was_installed() {
        let tenant = TenantId::new("acme").unwrap();
        let mut doc =
            TenantConfigDoc::create(&tenant, Timestamp::from_millis(1_000), ActorId::random())
                .unwrap();
        assert_eq!(doc.config().unwrap().listing(), PluginListing::default());
        let by = UserId::new("admin@acme.example").unwrap();
        let (mut v1, v2) = (ruleset("1.0.0", 1), ruleset("1.1.0", 2));
        v1.settings = vec![Setting {
            key: "hours".to_owned(),
            value: "10:00-17:00".to_owned(),
        }];
        let (id1, id2) = (
            ContentHash::from_bytes([0xa1; 32]),
            ContentHash::from_bytes([0xb2; 32]),
        );
        for (at, id, ruleset, component) in [
            (2_000, id1, &v1, b"one".as_slice()),
            (3_000, id2, &v2, b"two"),
        ] {
            let install = Install {
                ruleset: id,
                at: Timestamp::from_millis(at),
                by: by.clone(),
            };
            doc.install(id, ruleset, component, &install).unwrap();
        }
        let listing = doc.config().unwrap().listing();
        assert_eq!(listing.active, Some(id2));
        assert_eq!(
            listing
                .rulesets
                .iter()
                .map(|r| (r.id, r.active, r.installed_at))
                .collect::<Vec<_>>(),
            [
                (id2, true, Some(Timestamp::from_millis(3_000))),
                (id1, false, Some(Timestamp::from_millis(2_000)))
            ]
        );
        assert_eq!(listing.rulesets[1].installed_by, Some(by));
        assert_eq!(listing.installs.len(), 2);

        // A rollback by a prefix of the id sends the first install's file and setup.
        let prefix = &id1.to_string()[..8];
        assert_eq!(
            doc.reinstall_request(prefix).unwrap(),
            RpcCall::PluginInstall {
                file: b"one".to_vec(),
                settings: v1.settings.clone(),
                holidays: v1.holidays.clone(),
                time_zone: "Asia/Tokyo".to_owned(),
            }
        );
        for unknown in ["", "ffff", "zz"] {
            let err = doc.reinstall_request(unknown).unwrap_err();
            assert_eq!(err.code(), "unknown-ruleset", "{unknown:?}");
            assert!(err.message_ja().contains("インストールされていません"));
        }
    }

    #[test]
    fn an_install_request_refuses_what_it_cannot_send_and_defaults_to_japans_holidays() {
        let call = install_request(
            b"\0asm".to_vec(),
            &[" hours = 10:00-17:00 ".to_owned(), String::new()],
            None,
            " Asia/Tokyo ",
        )
        .unwrap();
        let RpcCall::PluginInstall {
            settings,
            holidays,
            time_zone,
            ..
        } = call
        else {
            panic!("not an install: {call:?}");
        };
        assert_eq!(
            settings,
            [Setting {
                key: "hours".to_owned(),
                value: "10:00-17:00".to_owned()
            }]
        );
        assert_eq!(holidays, holidays::japan());
        assert_eq!(time_zone, "Asia/Tokyo");

        let refusals = [
            install_request(Vec::new(), &["hours".to_owned()], None, "Asia/Tokyo"),
            install_request(Vec::new(), &["=x".to_owned()], None, "Asia/Tokyo"),
            install_request(Vec::new(), &[], Some("2026-13-01,nope"), "Asia/Tokyo"),
            install_request(vec![0; MAX_INSTALL_FILE_BYTES + 1], &[], None, "Asia/Tokyo"),
        ];
        let codes: Vec<&str> = refusals
            .iter()
            .map(|r| r.as_ref().unwrap_err().code())
            .collect();
        assert_eq!(
            codes,
            [
                "bad-setting",
                "bad-setting",
                "bad-holidays",
                "plugin-too-large"
            ]
        );
        let holidays_ja = refusals[2].as_ref().unwrap_err().message_ja();
        assert!(holidays_ja.contains("1 行目"), "{holidays_ja}");
    }

    #[test]
    fn a_customer_document_is_not_a_configuration() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "schema", ScalarValue::Uint(1)).unwrap();
        doc.put(ROOT, "tenant", "acme").unwrap();
        let err = TenantConfigDoc::from_automerge(doc).unwrap_err();
        assert_eq!(err.code(), "malformed-document");
    }
}
