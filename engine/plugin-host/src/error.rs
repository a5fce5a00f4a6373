//! Why a plugin file was refused, or why a plugin call failed.
//!
//! Owns: [`PluginError`], one typed error for every way a plugin can go wrong, and
//! [`Failure`], what went wrong inside a call. Run-time errors name the plugin (its
//! id and version once known, its hash before), so an admin can tell which build
//! misbehaved.

use callsync_core::plugin::{InvalidAnswer, Refusal, SUPPORTED_API_VERSIONS};

/// Something wrong with a plugin file or a plugin call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Neither a WebAssembly module nor a component (or cut off before its header).
    #[error("not a WebAssembly module or component")]
    NotWasm,
    /// Larger than a plugin may be.
    #[error("the plugin is {size} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Starts like WebAssembly but does not parse or validate (truncated, corrupt).
    #[error("not a valid WebAssembly plugin: {0}")]
    Invalid(String),
    /// Imports something: a plugin imports nothing.
    #[error("a plugin may import nothing, but this one imports: {}", .0.join(", "))]
    Imports(Vec<String>),
    /// Built for an API version this engine does not run.
    #[error(
        "built for plugin API {found}; this engine supports {}",
        SUPPORTED_API_VERSIONS.join(", ")
    )]
    UnsupportedApi {
        /// The version the plugin exports.
        found: String,
    },
    /// Exports no rules interface at all.
    #[error("exports no `callsync:rules/result-rules` interface (exports: {})", .0.join(", "))]
    NoRulesExport(Vec<String>),
    /// The plugin refused the settings it was installed with.
    #[error("plugin {plugin} refused its settings: {} ({})", .refusal.message_en, .refusal.code)]
    SettingsRefused {
        /// Which plugin.
        plugin: String,
        /// What it said.
        refusal: Refusal,
    },
    /// A call into the plugin failed; the host is unharmed.
    #[error("plugin {plugin} failed in `{function}`: {failure}")]
    Failed {
        /// Which plugin (`id@version`, or its hash before it named itself).
        plugin: String,
        /// Which export.
        function: &'static str,
        /// What went wrong.
        failure: Failure,
    },
}

impl PluginError {
    /// A stable code for scripts and the UI.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotWasm => "plugin-not-wasm",
            Self::TooLarge { .. } => "plugin-too-large",
            Self::Invalid(_) => "plugin-invalid",
            Self::Imports(_) => "plugin-imports",
            Self::UnsupportedApi { .. } => "plugin-api-unsupported",
            Self::NoRulesExport(_) => "plugin-no-rules",
            Self::SettingsRefused { .. } => "plugin-settings-refused",
            Self::Failed { failure, .. } => failure.code(),
        }
    }

    /// The verdict in Japanese, for the admin screen (the data it names, such as
    /// import names, stays as it is).
    pub fn message_ja(&self) -> String {
        match self {
            Self::NotWasm => {
                "WebAssembly のモジュールまたはコンポーネントではありません".to_owned()
            }
            Self::TooLarge { size, max } => {
                format!("プラグインが大きすぎます（{size} バイト、上限 {max} バイト）")
            }
            Self::Invalid(_) => {
                "WebAssembly として正しくありません（壊れているか途中で切れています）".to_owned()
            }
            Self::Imports(names) => format!(
                "プラグインは何もインポートできませんが、このプラグインはインポートしています: {}",
                names.join(", ")
            ),
            Self::UnsupportedApi { found } => format!(
                "プラグイン API {found} 向けに作られています（このサーバーが対応するのは {}）",
                SUPPORTED_API_VERSIONS.join(", ")
            ),
            Self::NoRulesExport(_) => {
                "結果ルールのインターフェース（callsync:rules/result-rules）がありません".to_owned()
            }
            Self::SettingsRefused { plugin, refusal } => {
                format!(
                    "プラグイン {plugin} が設定を受け付けませんでした: {}",
                    refusal.message_ja
                )
            }
            Self::Failed {
                plugin, failure, ..
            } => {
                format!("プラグイン {plugin} の確認中に{}", failure.message_ja())
            }
        }
    }
}

/// What went wrong inside one plugin call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Ran out of fuel (the deterministic cap on work per call).
    #[error("used all of its {0} units of fuel")]
    OutOfFuel(u64),
    /// Ran past the wall-clock deadline.
    #[error("ran past its {0} ms deadline")]
    Deadline(u64),
    /// Tried to grow its memory past the limit.
    #[error("tried to use more than {0} bytes of memory")]
    OutOfMemory(usize),
    /// Exhausted its call stack (runaway recursion).
    #[error("exhausted its call stack")]
    StackOverflow,
    /// Trapped otherwise (a panic is an `unreachable` trap).
    #[error("trapped: {0}")]
    Trapped(String),
    /// Answered something no plugin may answer.
    #[error("answered something invalid: {0}")]
    InvalidAnswer(InvalidAnswer),
    /// Could not even be instantiated.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

impl Failure {
    /// A stable code for scripts and the UI.
    pub fn code(&self) -> &'static str {
        match self {
            Self::OutOfFuel(_) => "plugin-out-of-fuel",
            Self::Deadline(_) => "plugin-deadline",
            Self::OutOfMemory(_) => "plugin-out-of-memory",
            Self::StackOverflow => "plugin-stack-overflow",
            Self::Trapped(_) => "plugin-trapped",
            Self::InvalidAnswer(_) => "plugin-invalid-answer",
            Self::Instantiate(_) => "plugin-instantiate",
        }
    }

    /// What went wrong, in Japanese (follows "…の確認中に").
    pub fn message_ja(&self) -> String {
        match self {
            Self::OutOfFuel(_) => "計算量の上限を超えました".to_owned(),
            Self::Deadline(ms) => format!("制限時間（{ms} ミリ秒）を超えました"),
            Self::OutOfMemory(bytes) => format!("メモリの上限（{bytes} バイト）を超えました"),
            Self::StackOverflow => "スタックを使い果たしました".to_owned(),
            Self::Trapped(_) => "異常終了しました".to_owned(),
            Self::InvalidAnswer(_) => "不正な答えを返しました".to_owned(),
            Self::Instantiate(_) => "起動できませんでした".to_owned(),
        }
    }
}
