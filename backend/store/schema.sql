-- The feature database: the one place its layout is written down.
--
-- One file holds one or more runs (a run = one model, one corpus pass, one or more SAEs).
-- Rows of a run become visible to readers only together with runs.status = 'complete':
-- everything but the `runs` row is written in the same transaction that sets it.
-- Feature-level tables are inserted sorted by (sae, feature, ...) so DuckDB's zone maps make
-- one feature's lookup a scan of a handful of row groups even at 12 x 24,576 features.
-- Where a figure is computed is named beside its column (modules under backend/engine/).

-- The layout version this file was written with; readers refuse other versions with a message.
CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    run_id      VARCHAR PRIMARY KEY,
    status      VARCHAR NOT NULL,      -- running | complete | failed | interrupted
    model       VARCHAR NOT NULL,
    model_kind  VARCHAR NOT NULL,      -- causal | encoder
    corpus      VARCHAR NOT NULL,
    n_tokens    BIGINT,                -- tokens that entered the statistics
    n_seqs      BIGINT,
    context_len INTEGER,               -- tokens per sequence, special tokens included
    dtype       VARCHAR,
    device      VARCHAR,
    config      JSON,                  -- every option of the run
    versions    JSON,                  -- library versions
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    error       VARCHAR
);

-- One row per SAE; `sae` is the id pages and URLs use, unique within the file.
CREATE TABLE IF NOT EXISTS saes (
    run_id            VARCHAR NOT NULL,
    sae               VARCHAR NOT NULL,
    hook              VARCHAR NOT NULL,    -- TransformerLens hook name
    depth             DOUBLE NOT NULL,     -- position in the model for sorting: resid_pre of block L is L - 0.5 (models.hook_depth)
    source            VARCHAR NOT NULL,    -- "release/sae_id" or a local folder
    architecture      VARCHAR,
    d_in              INTEGER,
    d_sae             INTEGER,
    sae_config        JSON,
    -- n_tokens .. n_dense: stats.LayerMetrics, computed in stats.FeatureStats.layer_metrics
    n_tokens          BIGINT,
    l0                DOUBLE,
    mse               DOUBLE,
    explained_variance DOUBLE,
    n_dead            INTEGER,
    n_dense           INTEGER,             -- density > backend.density.DENSE
    -- downstream_*: on the splice sample (propagation.Propagation.downstream): the model's own loss
    -- (engine.loss) clean, with the SAE spliced in, with its hook zero-ablated, and how much the
    -- splice recovers: (ablated - spliced) / (ablated - clean)
    downstream_metric VARCHAR,             -- ce_loss_recovered | contrastive_loss_recovered
    downstream_value  DOUBLE,
    downstream_clean  DOUBLE,
    downstream_spliced DOUBLE,
    downstream_ablated DOUBLE,
    downstream_cosine DOUBLE,              -- encoders: mean cosine of the spliced sentence embedding to the clean one
    effect_kind       VARCHAR,             -- unembed (W_dec . W_U) | embed (W_dec . W_E)
    hist_lo           DOUBLE,              -- log10 range of the per-feature activation histogram
    hist_hi           DOUBLE,
    context_left      INTEGER,
    context_right     INTEGER,
    train_context     INTEGER,             -- tokens per sequence the SAE was trained on (tables.train_context); NULL: unknown
    -- ev_* / rel_error_*: stats.ContextMetrics, on positions < train_context and at or past it
    -- (NULL when unknown, or when the run never read past it)
    ev_inside         DOUBLE,
    rel_error_inside  DOUBLE,
    ev_beyond         DOUBLE,
    rel_error_beyond  DOUBLE,
    grp               INTEGER NOT NULL,    -- which precompute of the run measured this SAE: 0 the first, 1, 2 ... each
                                           -- --append; propagation and compounding pair only SAEs of one group
    PRIMARY KEY (sae)
);

-- Per feature. hist: counts of nonzero activations in log10 bins between hist_lo and
-- hist_hi, with an underflow bin first and an overflow bin last.
CREATE TABLE IF NOT EXISTS features (
    sae      VARCHAR NOT NULL,
    feature  INTEGER NOT NULL,
    count    BIGINT NOT NULL,              -- stats.FeatureStats.count (histogram sums)
    density  DOUBLE NOT NULL,              -- count / tokens; 0 for dead features (stats.FeatureStats.feature_table)
    mean_act DOUBLE NOT NULL,              -- mean activation when active
    max_act  DOUBLE NOT NULL,
    hist     INTEGER[] NOT NULL,
    count_ge_1pct  BIGINT NOT NULL,        -- activations >= 1% / 10% of max_act, from hist (density.counts_at_least):
    count_ge_10pct BIGINT NOT NULL,        -- "firing" without the micro-activations of ReLU SAEs
    top_tokens VARCHAR                     -- most frequent activating tokens among top examples (writes.TOP_TOKENS,
                                           -- computed from `examples`, `sequences` and `vocab`, so written after them)
);

-- kind 0 (schema.ExampleKind.TOP): top-activating, rank 0 = highest; kind 1 (QUANTILE): sampled
-- across activation quantiles, `quantile` 0 = lowest (-1 for top examples). The context is
-- sequences.tokens[ctx_start : ctx_start + len(acts)], acts the feature's activation on each of
-- those tokens; the example token is at `pos`. Written by tables.examples_table.
CREATE TABLE IF NOT EXISTS examples (
    sae       VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    kind      TINYINT NOT NULL,
    rank      SMALLINT NOT NULL,
    quantile  TINYINT NOT NULL,
    seq       INTEGER NOT NULL,
    pos       SMALLINT NOT NULL,
    ctx_start SMALLINT NOT NULL,
    value     FLOAT NOT NULL,
    acts      FLOAT[] NOT NULL
);

-- The corpus, once: token ids of every sequence the run read (special tokens included).
CREATE TABLE IF NOT EXISTS sequences (
    run_id VARCHAR NOT NULL,
    seq    INTEGER NOT NULL,
    tokens INTEGER[] NOT NULL
);

-- Derived for search, written with the tables they come from (RunWriter.finish), so a search in
-- a fresh process neither decodes the corpus nor scans every example:
-- each sequence's tokens decoded and lower-cased one by one, joined (store.corpus_text)
CREATE TABLE IF NOT EXISTS sequence_text (
    run_id VARCHAR NOT NULL,
    seq    INTEGER NOT NULL,
    text   VARCHAR NOT NULL
);

-- the top examples (kind 0) again, sorted by sequence within each precompute group: the
-- examples of the few sequences a text occurs in lie in a few row groups, where `examples`
-- (sorted by feature) spreads them over all of its rows
CREATE TABLE IF NOT EXISTS examples_by_seq (
    seq       INTEGER NOT NULL,
    sae       VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    rank      SMALLINT NOT NULL,
    pos       SMALLINT NOT NULL,
    ctx_start SMALLINT NOT NULL,
    value     FLOAT NOT NULL,
    token_id  INTEGER NOT NULL         -- the token at `pos`: a text inside one token is found by token, not by sequence
);

-- Display text of every token id of the run's tokenizer. Positions holding a special token
-- (BOS/EOS/CLS/SEP, and the separators the corpus reader puts between documents) are not
-- counted in any statistic unless the run's config says include_special.
CREATE TABLE IF NOT EXISTS vocab (
    run_id   VARCHAR NOT NULL,
    token_id INTEGER NOT NULL,
    token    VARCHAR NOT NULL,
    special  BOOLEAN NOT NULL
);

-- direction +1: the tokens the feature's decoder direction promotes most; -1: suppresses most
-- (weights.token_effects).
CREATE TABLE IF NOT EXISTS token_effects (
    sae       VARCHAR NOT NULL,
    feature   INTEGER NOT NULL,
    direction TINYINT NOT NULL,
    rank      SMALLINT NOT NULL,
    token_id  INTEGER NOT NULL,
    value     FLOAT NOT NULL
);

-- Nearest features by cosine similarity of decoder rows (weights.neighbours).
CREATE TABLE IF NOT EXISTS neighbours (
    sae      VARCHAR NOT NULL,
    feature  INTEGER NOT NULL,
    rank     SMALLINT NOT NULL,
    other    INTEGER NOT NULL,
    cosine   FLOAT NOT NULL
);

-- Per SAE and token position: squared reconstruction error and squared input norm, summed.
CREATE TABLE IF NOT EXISTS position_error (
    sae      VARCHAR NOT NULL,
    pos      INTEGER NOT NULL,
    n        BIGINT NOT NULL,
    mse      DOUBLE NOT NULL,              -- mean ||x - x_hat||^2
    rel_error DOUBLE NOT NULL              -- sum ||x - x_hat||^2 / sum ||x||^2
);

-- Per SAE, histogram of log10(density) over live features, 0.1-decade bins (backend.density).
CREATE TABLE IF NOT EXISTS density_hist (
    sae      VARCHAR NOT NULL,
    bin_lo   DOUBLE NOT NULL,
    bin_hi   DOUBLE NOT NULL,
    n        INTEGER NOT NULL
);

-- Error propagation (engine.propagation.Propagation), measured on the splice sample: the
-- sequences config.splice_members picks. Stored as sums so shard states add up exactly;
-- the ratio columns are those sums divided.
-- One row per spliced SAE `sae` and hook measured at or after its own hook (hooks with an SAE).
CREATE TABLE IF NOT EXISTS propagation (
    run_id       VARCHAR NOT NULL,
    sae          VARCHAR NOT NULL,     -- the SAE whose reconstruction replaced its hook's activations
    hook         VARCHAR NOT NULL,     -- where the residual stream x'_j was compared with the clean x_j
    depth        DOUBLE NOT NULL,      -- of `hook` (models.hook_depth)
    n_tokens     BIGINT NOT NULL,      -- counted tokens of the sample (special tokens excluded)
    delta_sq     DOUBLE NOT NULL,      -- sum ||x'_j - x_j||^2
    clean_sq     DOUBLE NOT NULL,      -- sum ||x_j||^2
    resid_change DOUBLE                -- delta_sq / clean_sq (at the SAE's own hook: its relative error)
);

-- SAE `target` of the spliced SAE's family, at a hook after it, reconstructing the perturbed
-- stream (*_spliced) next to the clean stream (*_clean) on the same tokens.
CREATE TABLE IF NOT EXISTS propagation_recon (
    run_id            VARCHAR NOT NULL,
    sae               VARCHAR NOT NULL,
    target            VARCHAR NOT NULL,
    hook              VARCHAR NOT NULL,    -- the target's hook
    depth             DOUBLE NOT NULL,
    n_tokens          BIGINT NOT NULL,
    err_clean         DOUBLE,              -- sum ||x - SAE(x)||^2
    var_clean         DOUBLE,              -- sum ||x - mean x||^2
    x2_clean          DOUBLE,              -- sum ||x||^2
    ev_clean          DOUBLE,              -- 1 - err / var
    rel_error_clean   DOUBLE,              -- err / x2
    err_spliced       DOUBLE,
    var_spliced       DOUBLE,
    x2_spliced        DOUBLE,
    ev_spliced        DOUBLE,
    rel_error_spliced DOUBLE
);

-- The model's own loss (engine.loss) with SAEs spliced in. mode 'alone': only `sae`; 'ablated':
-- `sae`'s hook set to zero instead; 'compound': every SAE of its family (architecture) at hooks
-- up to its own, `n_spliced` of them; 'random': instead of the SAE's reconstruction, the clean
-- activation plus a random direction with the norm of the SAE's error at each token (seeded per
-- SAE, sequence and draw), `draws` of them averaged. metric 'ce_loss': next-token cross-entropy,
-- n = predicted tokens; 'contrastive_loss': sentence-transformers' MultipleNegativesRankingLoss
-- (scale 20) over the sample's adjacent-window pairs, n = pairs.
CREATE TABLE IF NOT EXISTS splice_output (
    run_id      VARCHAR NOT NULL,
    sae         VARCHAR NOT NULL,
    mode        VARCHAR NOT NULL,
    family      VARCHAR NOT NULL,
    depth       DOUBLE NOT NULL,
    n_spliced   INTEGER NOT NULL,
    draws       INTEGER,               -- mode 'random': directions averaged
    metric      VARCHAR NOT NULL,
    n           BIGINT NOT NULL,
    clean       DOUBLE,                -- the clean model's loss on the sample
    spliced     DOUBLE,                -- with the intervention
    cosine      DOUBLE                 -- encoders: mean cosine of each sequence's embedding to its clean one
);

-- The loss increase from splicing one SAE in, by context (propagation.Propagation.context_rows).
-- Causal models: predictions that see ctx_lo .. ctx_hi tokens (BOS included), from the full
-- sample; encoders: the sample's pairs cut to texts of ctx_lo = ctx_hi tokens (engine.loss.truncate).
CREATE TABLE IF NOT EXISTS splice_context (
    run_id   VARCHAR NOT NULL,
    sae      VARCHAR NOT NULL,
    family   VARCHAR NOT NULL,
    depth    DOUBLE NOT NULL,
    metric   VARCHAR NOT NULL,
    ctx_lo   INTEGER NOT NULL,
    ctx_hi   INTEGER NOT NULL,
    n        BIGINT NOT NULL,      -- predicted tokens, or pairs
    clean    DOUBLE,
    spliced  DOUBLE,
    increase DOUBLE                -- spliced - clean
);

-- Steering every feature (engine.steering): the change of the model's loss on the splice sample
-- when strength x max_act x W_dec[f] is added at the SAE's hook on every position. `estimate`:
-- first order at strength +1 (at -1 it is the negative); exact_*: a real steered forward at +1 / -1,
-- for the features `pick` names (steering.Pick: 1 the estimate's best, 2 its worst, 3 a
-- density-stratified sample; 0 not measured, NULL). NULL estimate: a dead feature.
CREATE TABLE IF NOT EXISTS steering (
    sae         VARCHAR NOT NULL,
    feature     INTEGER NOT NULL,
    estimate    DOUBLE,
    exact_plus  DOUBLE,
    exact_minus DOUBLE,
    pick        TINYINT NOT NULL
);

-- Per SAE (steering.Sweep.summary): est_hurt_*: share of live features the estimate says raise the
-- loss at +1 / -1; hurt_*: share of the density-stratified sample whose exact change raises it at
-- +1 / -1 / both; how the estimate agrees with the exact changes (both signs, every measured feature).
CREATE TABLE IF NOT EXISTS steering_summary (
    sae           VARCHAR NOT NULL,
    metric        VARCHAR NOT NULL,
    clean_loss    DOUBLE,
    n_seqs        INTEGER,
    n_live        INTEGER,
    est_hurt_plus DOUBLE,
    est_hurt_minus DOUBLE,
    n_sample      INTEGER,
    hurt_plus     DOUBLE,
    hurt_minus    DOUBLE,
    hurt_both     DOUBLE,
    n_exact       INTEGER,
    spearman      DOUBLE,
    sign_agree    DOUBLE
);

-- Why features sit where they do in density (engine.clusters, at the end of a run). One row
-- per feature of every SAE.
CREATE TABLE IF NOT EXISTS feature_diagnostics (
    sae          VARCHAR NOT NULL,
    feature      INTEGER NOT NULL,
    map_x        FLOAT,                -- 2-D layout of the decoder directions (clusters.feature_map)
    map_y        FLOAT,
    tail_cos     FLOAT,                -- encoder cosine to the low-density tail's mean direction (clusters.tail_direction)
    pos_corr     FLOAT,                -- correlation of the activation (0 where silent) with token position, over
                                       -- every counted token (stats.FeatureStats.position_correlation); NULL if dead
    anti_partner INTEGER,              -- dense features: the most anti-aligned decoder direction (clusters.antipodal)
    anti_cos     FLOAT,                --   and its cosine; NULL for features that are not dense
    -- position profile (stats.FeatureStats.position_profile): firings and activation sum per bucket of
    -- sae_diagnostics.pos_width positions; pos_kl: KL divergence in bits of the firings' distribution
    -- over the buckets from the counted tokens' (positions.position_kl); NULL if dead
    pos_kl       FLOAT,
    pos_fire     BIGINT[],
    pos_act      FLOAT[]
);

-- Per SAE: how its map was made and what its low-density tail is.
CREATE TABLE IF NOT EXISTS sae_diagnostics (
    sae        VARCHAR NOT NULL,
    map_method VARCHAR NOT NULL,       -- umap | pca (precompute --feature-map, or an SAE too narrow for UMAP)
    tail_cut   DOUBLE NOT NULL,        -- density below which the tail lies (clusters.tail_cut, or --tail-below)
    tail_auto  BOOLEAN NOT NULL,       -- the cut was found in the density histogram, not given
    tail_n     INTEGER NOT NULL,       -- live features below it
    tail_share DOUBLE,                 -- share of them with encoder cosine > 0.9 to their mean direction
    pos_width  INTEGER NOT NULL,       -- positions per bucket of the position profile
    pos_tokens BIGINT[] NOT NULL       -- counted tokens per bucket
);
