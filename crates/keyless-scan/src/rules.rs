//! The built-in rule set: one entry per credential kind.
//!
//! Each rule is a regex (the secret is the `s` capture group when there is
//! one, else the whole match), the keywords that must occur near a match
//! (the prefilter: a file holding none of any rule's keywords costs one
//! aho-corasick pass), an optional entropy minimum and context words, and
//! positive and negative examples that `tests/rules.rs` checks. The example
//! values are fake: random strings of the right shape, or the vendor's own
//! documented example.

use crate::{Rule, Severity};

/// Characters allowed to end a token drawn from the URL-safe alphabet.
/// A PEM/PGP armor line, `-----BEGIN LABEL-----`, assembled at compile time
/// so this source holds no literal key block (secret scanners, ours
/// included, would rightly flag one).
macro_rules! armor {
    ($edge:literal, $label:literal) => {
        concat!("-----", $edge, " ", $label, "-----")
    };
}

macro_rules! tail {
    () => {
        r"(?:[^0-9A-Za-z_-]|\z)"
    };
}

/// Shorthand for a rule with the common defaults (no entropy minimum, no
/// context, specific, a 512-byte window, placeholders allowed).
#[expect(clippy::too_many_arguments, reason = "a table row, read as one")]
fn r(
    id: &'static str,
    name: &'static str,
    severity: Severity,
    keywords: &'static [&'static str],
    pattern: &'static str,
    min_entropy: f64,
    positive: &'static [&'static str],
    negative: &'static [&'static str],
) -> Rule {
    Rule {
        id,
        name,
        severity,
        pattern,
        keywords,
        min_entropy,
        context: &[],
        generic: false,
        reject_placeholders: false,
        window: 512,
        positive,
        negative,
    }
}

impl Rule {
    fn context(mut self, words: &'static [&'static str]) -> Self {
        self.context = words;
        self
    }
    fn generic(mut self) -> Self {
        self.generic = true;
        self.reject_placeholders = true;
        self
    }
    fn no_placeholders(mut self) -> Self {
        self.reject_placeholders = true;
        self
    }
    fn window(mut self, bytes: usize) -> Self {
        self.window = bytes;
        self
    }
}

use Severity::{High, Low, Medium};

/// The built-in rules, in report order.
pub(crate) fn builtin() -> Vec<Rule> {
    vec![
        // --- cloud providers -------------------------------------------------
        r("aws-access-key-id", "AWS access key ID", High,
          &["AKIA", "ASIA", "ABIA", "ACCA"],
          r"\b(?P<s>(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b", 3.0,
          &["aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "key: AKIAJPJOMKEFOIUC5LGT"],
          &["AKIAXXXXXXXXXXXXXXXX", "AKIA1234", "akiaiosfodnn7example"]),
        r("aws-secret-access-key", "AWS secret access key", High, &["aws"],
          r#"(?i)aws[a-z0-9_ .-]{0,20}(?:secret|sk)[a-z0-9_ .-]{0,20}["']?\s*[:=]\s*["']?(?P<s>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#, 4.0,
          &["aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SECRET_KEY: \"vQGY7nU4dINx2eZRwN+ptWPYxAwIZ0DqK7fCOokP\""],
          &["aws_secret_access_key = XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "aws_secret_access_key = ${AWS_SECRET}"])
            .context(&["aws"]),
        r("aws-session-token", "AWS session token", High, &["aws_session_token", "aws-session-token", "x-amz-security-token"],
          r#"(?i)(?:aws_session_token|aws-session-token|x-amz-security-token)["']?\s*[:=]\s*["']?(?P<s>[A-Za-z0-9/+=]{100,})"#, 4.0,
          &["aws_session_token = yQnP8o4FG5B5EGnwAp+cz2jlPR9+RrxEmlKi+Mf549e3y3FEYVFPqTLkCVeHcKMTXsHH/hkz0nQQG9WJ05X72qibobT+Jox17RWEVxropmO6W9/yNsOSUTbfUwzov1sjBNMFZlvLu5MhikfhyPsrTEIXdHJwqRIs"],
          &["aws_session_token = <session token here>"]),
        r("gcp-service-account-key", "Google Cloud service-account key", High, &["private_key_id"],
          r#""private_key_id"\s*:\s*"(?P<s>[0-9a-f]{40})""#, 3.0,
          &["{\"type\": \"service_account\", \"project_id\": \"demo\", \"private_key_id\": \"6842674c980fca8dee1dcce841f4a5b5ad3cf536\"}"],
          &["{\"type\": \"service_account\", \"private_key_id\": \"0000000000000000000000000000000000000000\"}"])
            .context(&["service_account"]),
        r("gcp-api-key", "Google API key", High, &["AIza"],
          concat!(r"\b(?P<s>AIza[0-9A-Za-z_-]{35})", tail!()), 3.5,
          &["GOOGLE_API_KEY=AIzacVRMk245Brxqq_KyzsOnFg4xarI6F3H-r_u"],
          &["AIzaXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", "AIza_short_value"]),
        r("google-oauth-client-secret", "Google OAuth client secret", High, &["GOCSPX-"],
          concat!(r"\b(?P<s>GOCSPX-[0-9A-Za-z_-]{28})", tail!()), 3.5,
          &["client_secret: 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"],
          &["GOCSPX-xxxxxxxxxxxxxxxxxxxxxxxxxxxx", "GOCSPX-short"]),
        r("google-oauth-access-token", "Google OAuth access token", Medium, &["ya29."],
          concat!(r"\b(?P<s>ya29\.[0-9A-Za-z_-]{40,})", tail!()), 3.5,
          &["Authorization: Bearer ya29.FWfDNJGhjaIFw40YUcYqvc4eDqFj1ZKnb8EXW-_srXpBKG7m85VKqF6b9Rw9NSp6lpBOpnbxR5KvW3_-q_UXX84FI0Ta01Mjk4JyoQdEjS8ZZAZ4F8VV2xjC"],
          &["ya29.placeholder", "ya29.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("azure-storage-connection-string", "Azure storage connection string", High, &["AccountKey="],
          r"AccountKey=(?P<s>[A-Za-z0-9+/]{86}==)", 4.0,
          &["DefaultEndpointsProtocol=https;AccountName=demo;AccountKey=nzvz/d8hO3mvRFbzupZJn48DPn5UcxeX1auGRyvr2GhlShhmeZV/R2gMwNRxovC14Hqrjz16A8eXXJg5tfiL8v==;EndpointSuffix=core.windows.net"],
          &["DefaultEndpointsProtocol=https;AccountName=devstoreaccount1;AccountKey=<your-key>", "UseDevelopmentStorage=true"]),
        r("azure-storage-account-key", "Azure storage account key", High, &["azure"],
          r#"(?i)azure[a-z0-9_.-]{0,30}key["']?\s*[:=]\s*["']?(?P<s>[A-Za-z0-9+/]{86}==)"#, 4.0,
          &["AZURE_STORAGE_KEY=A7orfo1hXLnqe3yeuDeWQmeZxldbwrg/WQrsAVZSEzia18ZDLLtxzVMoiE7CfpzNN3HLr4+wBcdqt61C4QttZQ=="],
          &["AZURE_STORAGE_KEY=${STORAGE_KEY}"]),
        r("azure-sas-token", "Azure shared access signature", High, &["sig="],
          r"[?&]sig=(?P<s>[A-Za-z0-9%+/]{40,}%3[Dd])", 3.5,
          &["https://demo.blob.core.windows.net/c?sv=2022-11-02&ss=b&srt=co&sp=r&se=2030-01-01T00:00:00Z&sig=+dKKfR9BEo8Ijf+L/LPSX6if6ElAcpkGXv+XjCnGvpYt%3D"],
          &["https://demo.blob.core.windows.net/c?sv=2022-11-02&sig=REDACTED"])
            .context(&["sv=", "se="]),
        r("azure-ad-client-secret", "Azure AD client secret", High, &["Q~"],
          r"(?:^|[^0-9A-Za-z_~.-])(?P<s>[0-9A-Za-z_~.-]{3}\dQ~[0-9A-Za-z_~.-]{31,34})(?:[^0-9A-Za-z_~.-]|\z)", 3.5,
          &["AZURE_CLIENT_SECRET=aEr8Q~JRgjzJclUlkjpcZsNlOtnCdb1qOl2COLBp"],
          &["Q~ is a pattern", "abc8Q~short"]),
        r("digitalocean-token", "DigitalOcean token", High, &["dop_v1_", "doo_v1_", "dor_v1_"],
          r"\b(?P<s>do[opr]_v1_[a-f0-9]{64})\b", 3.0,
          &["DIGITALOCEAN_TOKEN=dop_v1_7b917c7828131635c751d6c9c2af4f71fc7865ecb34867db276aa63565bfbeac"],
          &["dop_v1_0000000000000000000000000000000000000000000000000000000000000000", "dop_v1_abc"]),
        r("heroku-api-key", "Heroku API key", High, &["heroku"],
          r#"(?i)heroku[a-z0-9_ .-]{0,20}(?:key|token|secret)["']?\s*[:=]\s*["']?(?P<s>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"#, 3.0,
          &["HEROKU_API_KEY=7f1c489c-62d7-4b7c-a37c-3debaa1a1201"],
          &["HEROKU_APP_NAME=demo-app", "heroku_api_key = 00000000-0000-0000-0000-000000000000"]),
        r("heroku-platform-key", "Heroku platform API key (HRKU-)", High, &["HRKU-"],
          concat!(r"\b(?P<s>HRKU-[0-9A-Za-z_-]{40,})", tail!()), 3.5,
          &["token=HRKU-1BqHAZGigy5TLaFfSX3hD_qgR2k-dhLHEWRfkAYtPo_aK3lbpMeUU3B9w-Q_"],
          &["HRKU-xxxxxxxx"]),
        // --- source hosting and package registries ---------------------------
        r("github-pat", "GitHub personal access token (classic)", High, &["ghp_"],
          r"\b(?P<s>ghp_[0-9A-Za-z]{36})\b", 3.0,
          &["GITHUB_TOKEN=ghp_IAMftxJnEl6igpzfuZsvk2pK7SzhWTuW0ORT"],
          &["ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "ghp_short"]),
        r("github-fine-grained-pat", "GitHub fine-grained personal access token", High, &["github_pat_"],
          r"\b(?P<s>github_pat_[0-9A-Za-z]{22}_[0-9A-Za-z]{59})\b", 3.0,
          &["token: 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"],
          &["github_pat_placeholder", "github_pat_0000000000000000000000_00000000000000000000000000000000000000000000000000000000000"]),
        r("github-oauth-token", "GitHub OAuth access token", High, &["gho_"],
          r"\b(?P<s>gho_[0-9A-Za-z]{36})\b", 3.0,
          &["oauth_token=gho_iKL27NqHTKHpffPmDpfBJy14EBQaXP3wC7e6"], &["gho_000000000000000000000000000000000000"]),
        r("github-app-token", "GitHub App installation token", High, &["ghs_"],
          r"\b(?P<s>ghs_[0-9A-Za-z]{36})\b", 3.0,
          &["ghs_yIkeVqnIO0h4VrgO7OtI3WgWuVshcPzMXVa7"], &["ghs_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("github-user-to-server-token", "GitHub App user-to-server token", High, &["ghu_"],
          r"\b(?P<s>ghu_[0-9A-Za-z]{36})\b", 3.0,
          &["ghu_8zueKGurUTwTNam4mKghxMQeriRkqDbUP481"], &["ghu_1111111111111111111111111111111111111"]),
        r("github-refresh-token", "GitHub refresh token", High, &["ghr_"],
          r"\b(?P<s>ghr_[0-9A-Za-z]{36,76})\b", 3.0,
          &["refresh=ghr_3g7bwNsIsPbceCLizpLsfzdmRVQJCgGlPBYnfmJKBAIvHFoZfeFcaySb5MmsUMEdBMtlvQRiHKwI"], &["ghr_abc"]),
        r("gitlab-pat", "GitLab personal access token", High, &["glpat-"],
          concat!(r"\b(?P<s>glpat-[0-9A-Za-z_-]{20,})", tail!()), 3.0,
          &["GITLAB_TOKEN=glpat-cFDu25VGiqcq_6ijp_DC"], &["glpat-xxxxxxxxxxxxxxxxxxxx", "glpat-short"]),
        r("gitlab-runner-token", "GitLab runner authentication token", High, &["glrt-"],
          concat!(r"\b(?P<s>glrt-[0-9A-Za-z_-]{20,})", tail!()), 3.0,
          &["token = \"glrt-MMhVtieSf8NxCGgx2oc3\""], &["glrt-xxxxxxxxxxxxxxxxxxxx"]),
        r("gitlab-pipeline-trigger-token", "GitLab pipeline trigger token", Medium, &["glptt-"],
          r"\b(?P<s>glptt-[0-9a-f]{40})\b", 3.0,
          &["glptt-20558c7a6a088c681b4e70c53b99b8e562dc49c0"], &["glptt-0000000000000000000000000000000000000000"]),
        r("npm-token", "npm access token", High, &["npm_"],
          r"\b(?P<s>npm_[0-9A-Za-z]{36})\b", 3.0,
          &["//registry.npmjs.org/:_authToken=npm_zNDyhGxtIYi4JC543hz6Q1u01g6qdNFDwmKt"], &["npm_config_cache=/tmp/npm", "npm_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("pypi-token", "PyPI upload token", High, &["pypi-AgEIcHlwaS5vcmc"],
          concat!(r"\b(?P<s>pypi-AgEIcHlwaS5vcmc[0-9A-Za-z_-]{50,})", tail!()), 3.5,
          &["password = pypi-AgEIcHlwaS5vcmcoUGfYtFW-tSNT3OgeHS3lTh130rkHc2J3En0fI9Cf_wlHrk8_9u6e8J-_s7RCbxZ0tBUYdtgQR39b2mA"], &["pypi-AgEIcHlwaS5vcmc", "pypi-token-here"]),
        r("dockerhub-pat", "Docker Hub personal access token", High, &["dckr_pat_"],
          concat!(r"\b(?P<s>dckr_pat_[0-9A-Za-z_-]{27})", tail!()), 3.0,
          &["DOCKER_PASSWORD=dckr_pat_AYtHZzOx0AKzcWprEKmW3FtU_aa"], &["dckr_pat_xxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("atlassian-api-token", "Atlassian API token", High, &["ATATT3"],
          concat!(r"\b(?P<s>ATATT3[0-9A-Za-z_=-]{150,})", tail!()), 4.0,
          &["JIRA_TOKEN=ATATT31f5_7BVL0UeEsITmQo-CZBSRCbwLFLFRhB4wQfcAF-JF76cNcsqDoIkhUzXm_cPYQZkEwtMnP7tY4s-JaHGsmmf1WHku68v5r7Oea8lQyoBGZ7-wBXcyrBXjSuEaRrpTnOfFUyyZMcj8nlHmN27lsm12UrdN9MnJTXFE8teKlGQs7DvJroj0=fea5d5e6"], &["ATATT3xxxxxxxx"]),
        r("postman-api-key", "Postman API key", Medium, &["PMAK-"],
          r"\b(?P<s>PMAK-[0-9a-f]{24}-[0-9a-f]{34})\b", 3.0,
          &["PMAK-96e68033ecacc4bc64b4b315-3e30e3338777df8afbf23c1ed4346aebad"], &["PMAK-000000000000000000000000-0000000000000000000000000000000000"]),
        r("terraform-cloud-token", "Terraform Cloud API token", High, &[".atlasv1."],
          concat!(r"\b(?P<s>[0-9A-Za-z]{14}\.atlasv1\.[0-9A-Za-z_=-]{60,70})", tail!()), 4.0,
          &["token = \"YiuvJH8ohhPWc6.atlasv1.hZHHF0-EFt8p_bD6i9BPkDj3zHdo1B055YjnhDxS3aQHbOzg7GCi2DYpk6iMsUWKR5J\""], &["example.atlasv1.short"]),
        r("pulumi-token", "Pulumi access token", High, &["pul-"],
          r"\b(?P<s>pul-[0-9a-f]{40})\b", 3.0,
          &["PULUMI_ACCESS_TOKEN=pul-fb8230ebaf6d4684ffd93758b892cd297064dd11"], &["pul-0000000000000000000000000000000000000000"]),
        r("doppler-token", "Doppler service token", High, &["dp.pt."],
          r"\b(?P<s>dp\.pt\.[0-9A-Za-z]{43})\b", 3.5, &["DOPPLER_TOKEN=dp.pt.1GWhXiKXzPFMKX4qYXJ93WUHuSAzTlZ2U7CnYKggzeD"], &["dp.pt.placeholder"]),
        r("linear-api-key", "Linear API key", Medium, &["lin_api_"],
          r"\b(?P<s>lin_api_[0-9A-Za-z]{40})\b", 3.5, &["lin_api_crLnyL7ll9unJJK5B81LSeOCUW4GODvW64Np2Akt"], &["lin_api_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("grafana-service-account-token", "Grafana service account token", Medium, &["glsa_"],
          r"\b(?P<s>glsa_[0-9A-Za-z]{32}_[0-9a-fA-F]{8})\b", 3.5, &["glsa_UVtDiBUN8gCgPwIZ9PFDB5ETXErTqjKy_a70599c0"], &["glsa_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx_00000000"]),
        // --- chat, mail and messaging -----------------------------------------
        r("slack-bot-token", "Slack bot token", High, &["xoxb-"],
          r"\b(?P<s>xoxb-[0-9]{10,13}-[0-9]{10,13}-[0-9A-Za-z]{24,34})\b", 3.0,
          &["SLACK_BOT_TOKEN=xoxb-044344307439-4035438386868-h2SttpOUE2i3DYE0tuZJDpnY"], &["xoxb-your-token-here", "xoxb-0000000000-0000000000-xxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("slack-token", "Slack user, app or refresh token", High, &["xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe"],
          r"\b(?P<s>xox(?:[aprs]|e\.xox[bp]|e)-[0-9A-Za-z-]{30,})\b", 3.5,
          &["xoxp-481598228721-131207771001-7671721323941-52dac001ce101dfdc644f16f10fc2a01"], &["xoxp-your-token-here", "xoxp-0000000000000000000000000000000"]),
        r("slack-app-token", "Slack app-level token", High, &["xapp-"],
          r"\b(?P<s>xapp-\d-[A-Z0-9]{9,11}-\d{10,13}-[a-f0-9]{64})\b", 3.0,
          &["xapp-1-A3W2U5G3L9-2958600369660-be2a4fef5eb00b7a9d875af453d32d65f3d692cffcca18b413337d3d6ca9f4cf"], &["xapp-1-token"]),
        r("slack-webhook", "Slack incoming webhook", Medium, &["hooks.slack.com"],
          r"https://hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>T[A-Z0-9]{8,12}/[AB][A-Z0-9]{8,12}/[0-9A-Za-z]{24})\b", 3.0,
          &["https://hooks.slack.com/services/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"], &["https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"]),
        r("discord-bot-token", "Discord bot token", High, &["discord", "bot_token", "bot token"],
          concat!(r"(?:^|[^0-9A-Za-z_-])(?P<s>[MNO][0-9A-Za-z_-]{23,25}\.[0-9A-Za-z_-]{6}\.[0-9A-Za-z_-]{27,38})", tail!()), 4.0,
          &["DISCORD_BOT_TOKEN=M9vciYXK0rgss1l5OygJVsQ1bp.EL1XAy.5foxwRKbEBwt1XGwF1DFJsChvAIz5rpoTzYCMq"], &["discord_token = M.abc.def"]),
        r("discord-webhook", "Discord webhook", Medium, &["discord"],
          concat!(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{17,20}/(?P<s>[0-9A-Za-z_-]{60,68})", tail!()), 3.5,
          &["https://discord.com/api/webhooks/399947225149796393/FKSSUUo3yzZB_It_iPUADkyETOAklTMXrGspMKzV2i88f1YBa0MbvpycwLJGXxQ3JQ7R"], &["https://discord.com/api/webhooks/123/token"]),
        r("telegram-bot-token", "Telegram bot token", High, &[":AA"],
          concat!(r"(?:^|[^0-9])(?P<s>\d{8,10}:AA[0-9A-Za-z_-]{33})", tail!()), 3.5,
          &["TELEGRAM_TOKEN=0175845969:AAcpxKTU5wxLW1fITeqkfa485kB7WEJ8Zos"], &["time 12:AA:00", "123456789:AAxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("twilio-api-key", "Twilio API key", High, &["twilio"],
          r"\b(?P<s>SK[0-9a-fA-F]{32})\b", 3.0,
          &["TWILIO_API_KEY=SK61e05f344f704e3d5688ed6e11e6393f"], &["TWILIO_API_KEY=SKxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("twilio-auth-token", "Twilio auth token", High, &["twilio"],
          r#"(?i)twilio[a-z0-9_ .-]{0,20}(?:auth|token|secret)[a-z0-9_ .-]{0,10}["']?\s*[:=]\s*["']?(?P<s>[0-9a-f]{32})\b"#, 3.0,
          &["TWILIO_AUTH_TOKEN=ee3769e34e83c3d0d7ce35b7e8ba3a40"], &["TWILIO_AUTH_TOKEN=your_auth_token"]),
        r("sendgrid-api-key", "SendGrid API key", High, &["SG."],
          concat!(r"\b(?P<s>SG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43})", tail!()), 4.0,
          &["SENDGRID_API_KEY=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"], &["SG.xxxxxxxxxxxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("mailgun-api-key", "Mailgun API key", High, &["key-", "mailgun"],
          r"\b(?P<s>key-[0-9a-f]{32})\b", 3.0,
          &["MAILGUN_API_KEY=key-6474f88fa9f788415211247752ecd994"], &["monkey-business", "key-00000000000000000000000000000000"]),
        r("mailchimp-api-key", "Mailchimp API key", Medium, &["-us"],
          r"\b(?P<s>[0-9a-f]{32}-us[0-9]{1,2})\b", 3.0,
          &["MAILCHIMP_KEY=d409b9051a55795500914a95f87a14ba-us21"], &["locale en-us1", "00000000000000000000000000000000-us1"]),
        // --- AI providers ------------------------------------------------------
        r("openai-api-key", "OpenAI API key", High, &["T3BlbkFJ"],
          concat!(r"\b(?P<s>sk-(?:(?:proj|svcacct|admin)-)?[0-9A-Za-z_-]{20,}T3BlbkFJ[0-9A-Za-z_-]{20,})", tail!()), 4.0,
          &["OPENAI_API_KEY=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", "OPENAI_API_KEY=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"], &["sk-placeholder", "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("anthropic-api-key", "Anthropic API key", High, &["sk-ant-"],
          concat!(r"\b(?P<s>sk-ant-(?:api|admin|sid)[0-9]{2}-[0-9A-Za-z_-]{80,})", tail!()), 4.0,
          &["ANTHROPIC_API_KEY=sk-ant-api03-xd6x6LVcVaSXcqfDWY_Kc9qDFBtwuvZv1X5Li4jyJuY43FCtVvR8nNwXWF0sEx-XMo1juppfcBh2fvc1NC2_GxSidwXYPAA"], &["sk-ant-api03-placeholder"]),
        r("huggingface-token", "Hugging Face access token", High, &["hf_"],
          r"\b(?P<s>hf_[A-Za-z]{34})\b", 3.5,
          &["HF_TOKEN=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"], &["hf_hub_download", "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("cohere-api-key", "Cohere API key", High, &["cohere", "co_api_key"],
          r#"(?i)(?:cohere|co_api)[a-z0-9_ .-]{0,20}(?:key|token)["']?\s*[:=]\s*["']?(?P<s>[0-9A-Za-z]{40})\b"#, 4.0,
          &["COHERE_API_KEY=wLMNd2i5YtiNaNrlM1262jXxDRs46oMSQC9Jhj3c"], &["COHERE_API_KEY=<your-cohere-key>"]),
        r("replicate-api-token", "Replicate API token", High, &["r8_"],
          r"\b(?P<s>r8_[0-9A-Za-z]{37})\b", 3.5, &["REPLICATE_API_TOKEN=r8_8dXJdwbhMWKyqRRlW6wEo5C1p1WAyDJIqbR0e"], &["r8_short"]),
        // --- payments and commerce ---------------------------------------------
        r("stripe-secret-key", "Stripe live secret key", High, &["sk_live_"],
          r"\b(?P<s>sk_live_[0-9A-Za-z]{24,99})\b", 3.5,
          &["STRIPE_KEY=sk_live_iVk3aif8RV6VywLKxU4E7eLD"], &["sk_test_placeholder", "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("stripe-restricted-key", "Stripe live restricted key", High, &["rk_live_"],
          r"\b(?P<s>rk_live_[0-9A-Za-z]{24,99})\b", 3.5,
          &["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"], &["rk_live_short"]),
        r("square-access-token", "Square access token", High, &["sq0atp-", "EAAA"],
          concat!(r"\b(?P<s>(?:sq0atp-[0-9A-Za-z_-]{22}|EAAA[0-9A-Za-z_-]{60}))", tail!()), 3.5,
          &["SQUARE_TOKEN=sq0atp-Hx2gdD3Laxn_LwJ5PlZGLN", "SQUARE_TOKEN=EAAAWq2yeTZGK1m4rCmkdl2LaHipnJBKnoy5koicH9moK3UOOl4C_-3D5pU4nLvO"], &["sq0atp-short", "EAAAA"]),
        r("square-oauth-secret", "Square OAuth secret", High, &["sq0csp-"],
          concat!(r"\b(?P<s>sq0csp-[0-9A-Za-z_-]{43})", tail!()), 3.5,
          &["sq0csp-IJ3zNsnTo-1HrPV8CzIvAUv4BSxo-Fyv5zRFFljV1S3"], &["sq0csp-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("braintree-access-token", "Braintree/PayPal access token", High, &["access_token$production$"],
          r"\b(?P<s>access_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32})\b", 3.5,
          &["BRAINTREE=access_token$production$mxj9pwqm3gzwbm6y$0de24f04298c4252ec8d3945211070a8"], &["access_token$sandbox$abc"]),
        r("paypal-client-secret", "PayPal client secret", High, &["paypal"],
          concat!(r#"(?i)paypal[a-z0-9_ .-]{0,20}secret["']?\s*[:=]\s*["']?(?P<s>[0-9A-Za-z_-]{80})"#, tail!()), 4.0,
          &["PAYPAL_CLIENT_SECRET=5Kpa_TKZRxSC6uqYwD7eNwMAbCmgEXD9EuHTkomLqWghEkzgOn8ZD5a7EDsE80fGeyg_IA3vdP4uNbZu"], &["PAYPAL_CLIENT_SECRET=${PAYPAL_SECRET}"]),
        r("shopify-token", "Shopify access token", High, &["shpat_", "shpca_", "shppa_", "shpss_"],
          r"\b(?P<s>shp(?:at|ca|pa|ss)_[0-9a-fA-F]{32})\b", 3.0,
          &["SHOPIFY_TOKEN=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"], &["shpat_00000000000000000000000000000000"]),
        // --- observability -------------------------------------------------------
        r("datadog-api-key", "Datadog API key", High, &["datadog", "dd_api_key", "dd-api-key"],
          r#"(?i)(?:datadog|dd)[a-z0-9_ .-]{0,20}api[_-]?key["']?\s*[:=]\s*["']?(?P<s>[0-9a-f]{32})\b"#, 3.0,
          &["DD_API_KEY=0505a12f16501ee89c48063eb307f67e"], &["DD_API_KEY=<DATADOG_API_KEY>"]),
        r("datadog-app-key", "Datadog application key", High, &["datadog", "dd_app_key", "dd-app-key", "dd_application_key"],
          r#"(?i)(?:datadog|dd)[a-z0-9_ .-]{0,20}app(?:lication)?[_-]?key["']?\s*[:=]\s*["']?(?P<s>[0-9a-f]{40})\b"#, 3.0,
          &["DD_APP_KEY=565ed7ec4f153beefac21e84c3e28ff37918b288"], &["DD_APP_KEY=0000000000000000000000000000000000000000"]),
        r("newrelic-user-api-key", "New Relic user API key", High, &["NRAK-"],
          r"\b(?P<s>NRAK-[0-9A-Z]{27})\b", 3.0, &["NEW_RELIC_API_KEY=NRAK-9KPLJT001LJN6IRB8TVA16XHW0R"], &["NRAK-XXXXXXXXXXXXXXXXXXXXXXXXXXX"]),
        r("newrelic-ingest-key", "New Relic ingest/license key", Medium, &["NRII-", "NRJS-"],
          concat!(r"\b(?P<s>NR(?:II|JS)-[0-9A-Za-z_-]{19,32})", tail!()), 3.0, &["NRII-krluFwgLuAnq49mT0zlgNPCWfwROOR7r"], &["NRII-short"]),
        r("sentry-auth-token", "Sentry auth token", Medium, &["sntrys_", "sntryu_"],
          concat!(r"\b(?P<s>sntry[su]_[0-9A-Za-z_=+/-]{60,})", tail!()), 4.0,
          &["SENTRY_AUTH_TOKEN=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"], &["sntryu_short"]),
        // --- keys, tokens and URLs ---------------------------------------------
        r("private-key", "Private key (PEM)", High, &["PRIVATE KEY-----"],
          concat!(r"-----BEGIN (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED) )?PRIVATE", r" KEY-----(?P<s>[\sA-Za-z0-9+/=\\:,-]{64,}?)-----END (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED) )?PRIVATE KEY-----"), 4.0,
          &[concat!(armor!("BEGIN", "RSA PRIVATE KEY"), "\ntMpAn8Ijgq8ClA/+aMwEYdJJzkfjRrwZgqsI1AzbwnYsoF3fJDFSVCndtpwsePfa\n9wXBS+6UL/M/goY6neaCGw95Mwr97kzKtTiQxiQbTmuz3xWzGylvlsGah+VS6ts+\nd9wMzaw9nC6toYkYaF/i==\n", armor!("END", "RSA PRIVATE KEY")),
            concat!("\"private_key\": \"", armor!("BEGIN", "PRIVATE KEY"), "\\nsxZrwUXEdBDlagfq7c8El6tDAbf/G9Igw2IH6gFLHWUPTyKGZYuxkswBCg3WSQ3y\\nI3NP8nFD4fxTbL/VMbC+hNPBPJ7GSPd8RbuUxFrS5hTN4hqJLfoWuazX8NET0h/j\\n", armor!("END", "PRIVATE KEY"), "\\n\"")],
          &[concat!(armor!("BEGIN", "PUBLIC KEY"), "\nXZAk36ft1pD+Zh2hgx/faFVYWxrSyJrEIhOOE/e99BNg/LR5pUEhXmvxMfAtjrE7\n", armor!("END", "PUBLIC KEY")),
            concat!(armor!("BEGIN", "RSA PRIVATE KEY"), "\n...\n", armor!("END", "RSA PRIVATE KEY"))])
            .window(16384),
        r("pgp-private-key", "PGP private key block", High, &["PGP PRIVATE KEY BLOCK"],
          concat!(r"-----BEGIN PGP", r" PRIVATE KEY BLOCK-----(?P<s>[\sA-Za-z0-9+/=:,.()-]{64,}?)-----END PGP", r" PRIVATE KEY BLOCK-----"), 4.0,
          &[concat!(armor!("BEGIN", "PGP PRIVATE KEY BLOCK"), "\n\n4cchRBRrd8XZ0hj7z9Z5lOJcY+agrUZ0zw5rSf/g11dnW3cGj6CXHEI+kH6Ay8Ti\nN9b7V2053fWobXfEnsh/1B7xYbMEIPyk/+Pf78tChykTY7E9nEoi5kUEO+rXJ1fY\n=TR+5\n", armor!("END", "PGP PRIVATE KEY BLOCK"))],
          &[concat!(armor!("BEGIN", "PGP PUBLIC KEY BLOCK"), "\n\n63HsbwekbgjOGHU5hhiHy9Exs/ZpUUYfWCzWKini29zAqDC8DVPXKXd4BEt/KIO2\n", armor!("END", "PGP PUBLIC KEY BLOCK"))])
            .window(65536),
        r("age-secret-key", "age secret key", High, &["AGE-SECRET-KEY-1"],
          r"\b(?P<s>AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b", 3.5,
          &["AGE-SECRET-KEY-19W38U74WZDAVM45EWHD5888GPYUJV72VHGFFCASUMZ8TEW403D3L8XJKQF"], &["AGE-SECRET-KEY-1XXXX"]),
        r("jwt", "JSON Web Token", Low, &["eyJ"],
          concat!(r"\b(?P<s>eyJ[0-9A-Za-z_-]{10,}\.eyJ[0-9A-Za-z_-]{10,}\.[0-9A-Za-z_-]{20,})", tail!()), 4.0,
          &["Authorization: Bearer eyJhbGciOiAiRVMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAic3ZjLVFnR0RHbjB6IiwgImlhdCI6IDE3MDAwMDAwMDAsICJqdGkiOiAibGJZWUxyNkpIM2I3MmNmTSJ9.AsoaHexa1Sf6zNKiMEFBlU2Yy1XzECn6uuHtnNYT43kmo-3VtsMpZ72ZiEgEumqqSf2Fo11tBO69xBru9ZZ2aR"], &["eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm9uIn0.", "eyJ is how JSON starts in base64"]),
        r("vault-service-token", "Vault / Keyless broker service token", High, &["hvs."],
          concat!(r"\b(?P<s>hvs\.[0-9A-Za-z_-]{24,})", tail!()), 3.5,
          &["VAULT_TOKEN=hvs.6U1VOEk1ovBOjKoieTVlhLXMld0xVNUNRow74egWU3b"], &["hvs.placeholder", "VAULT_TOKEN=hvs.xxxxxxxxxxxxxxxxxxxxxxxx"]),
        r("vault-batch-token", "Vault / Keyless broker batch token", High, &["hvb."],
          concat!(r"\b(?P<s>hvb\.[0-9A-Za-z_-]{24,}(?:\.[0-9A-Za-z_-]{20,})?)", tail!()), 3.5,
          &["VAULT_TOKEN=hvb.bn3-2ZikiPAZrOnam4WudYRaOYS2_hnG4rGUWdgW1ItMpA9nlHBiNUOGt_6MwPuvTPwWluShkl88NVuMO_5Hu0EBbeww2n9eFXpx0yxBPt2HRDVaeoDOVg58.F8vm9v4P0dVnqF-IVfhtSWW3RHHqYcKDIT5jJ_IyqbKvzoVHoboH7g8ojIef-vw3xjNlIFJOX25anOKTXrlrjM"], &["hvb.short"]),
        r("postgres-url", "PostgreSQL URL with password", High, &["postgres"],
          r"(?i)\bpostgres(?:ql)?://[^:/\s@]+:(?P<s>[^@\s/]{4,})@[0-9A-Za-z.-]+", 2.5,
          &["DATABASE_URL=postgres://app:cIznaZ1jEkbNpw1CXvkb@db.internal:5432/app"], &["postgres://localhost:5432/app", "postgres://app:${DB_PASSWORD}@db/app", "postgresql://user:password@localhost/db"])
            .no_placeholders(),
        r("mysql-url", "MySQL URL with password", High, &["mysql"],
          r"(?i)\bmysql(?:x)?://[^:/\s@]+:(?P<s>[^@\s/]{4,})@[0-9A-Za-z.-]+", 2.5,
          &["mysql://root:TbzBQj9lSMllp3ln@10.0.0.5:3306/shop"], &["mysql://root@localhost/shop", "mysql://user:<password>@host/db"])
            .no_placeholders(),
        r("mongodb-url", "MongoDB URL with password", High, &["mongodb"],
          r"(?i)\bmongodb(?:\+srv)?://[^:/\s@]+:(?P<s>[^@\s/]{4,})@[0-9A-Za-z.-]+", 2.5,
          &["mongodb+srv://svc:GBK8Ya3BYKiMzFp4Zs@cluster0.mongo.internal/db"], &["mongodb://localhost:27017", "mongodb://user:changeme@localhost"])
            .no_placeholders(),
        r("redis-url", "Redis URL with password", High, &["redis"],
          r"(?i)\brediss?://[^:/\s@]*:(?P<s>[^@\s/]{4,})@[0-9A-Za-z.-]+", 2.5,
          &["REDIS_URL=rediss://default:tQq7Bh9igk8JyJgxYPtHIyLQ@cache.internal:6380"], &["redis://localhost:6379/0", "redis://:${REDIS_PASSWORD}@cache"])
            .no_placeholders(),
        r("amqp-url", "AMQP URL with password", High, &["amqp"],
          r"(?i)\bamqps?://[^:/\s@]+:(?P<s>[^@\s/]{4,})@[0-9A-Za-z.-]+", 2.5,
          &["amqp://svc:cw9MhlJN4SuyE3rs@rabbit.internal:5672/vhost"], &["amqp://guest:guest@localhost:5672"])
            .no_placeholders(),
        r("url-basic-auth", "Password in URL (basic auth)", Medium, &["http://", "https://", "ftp://"],
          r#"(?i)\b(?:https?|ftps?)://[^:/\s@"'<>]+:(?P<s>[^@\s/"'<>]{6,})@[0-9A-Za-z.-]+\.[A-Za-z]{2,}"#, 3.0,
          &["https://deploy:mOZuNBIhJjQKif5ZfR9Q@git.internal.example.org/repo.git"], &["https://user:password@example.com", "https://example.com:8443/path", "http://user:${TOKEN}@host.example.com"])
            .no_placeholders(),
        // --- generic assignments (lowest priority) -----------------------------
        r("generic-password", "Password assignment", Medium, &["password", "passwd", "pwd"],
          r#"(?i)(?:password|passwd|pwd)[a-z0-9_.-]{0,20}["']?\s*(?::=|=>|[:=])\s*["'`](?P<s>[^"'`\s]{12,100})["'`]"#, 3.3,
          &["db_password = \"-=#EYVh)Dw5GOk#F5R-W\""], &["password = \"changeme\"", "password: \"${DB_PASSWORD}\"", "password_hint = \"your-password-here\""])
            .generic(),
        r("generic-secret", "Secret assignment", Medium, &["secret"],
          r#"(?i)secret[a-z0-9_.-]{0,20}["']?\s*(?::=|=>|[:=])\s*["'`](?P<s>[^"'`\s]{16,200})["'`]"#, 3.5,
          &["client_secret: \"tWByUepCDBQYOKXTm1m8iyWwyp04eYxI\""], &["secret_name = \"prod-db-credentials\"", "secret: \"<client-secret>\""])
            .generic(),
        r("generic-token", "API key or token assignment", Medium, &["token", "api_key", "apikey", "api-key", "access_key", "auth_key"],
          r#"(?i)(?:token|api[_-]?key|access[_-]?key|auth[_-]?key)[a-z0-9_.-]{0,20}["']?\s*(?::=|=>|[:=])\s*["'`](?P<s>[^"'`\s]{16,200})["'`]"#, 3.5,
          &["api_key = 'fvzMOS8BZTh5DjHMLnDC1HEsXBFicigq'"], &["token_type = \"Bearer\"", "api_key = \"YOUR_API_KEY_GOES_HERE\"", "tokenizer = \"bert-base-uncased-model\""])
            .generic(),
    ]
}
