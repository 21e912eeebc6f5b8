"""Promise: credentials never sit in plain config. Wherever one appears outside the secret keys it is refused
with its key and where it belongs instead; a section stored encrypted keeps its env secret up to the object it
lands in."""

import pytest

from harness import Secret, assert_rejected, evaluate, evaluate_failure, unwrap

HF_TOKEN = "hf_" + "a1B2" * 9
OPENAI_KEY = "sk-" + "Zy9x" * 8
PRIVATE_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----"

REFUSED = [
    # (stack, overrides, key, text naming where it belongs)
    ("dev", {"models.chat.env.HF_TOKEN": "my-token-123"}, "models.chat.env.HF_TOKEN", "`hfToken` secret"),
    ("dev", {"models.chat.env.WANDB_API_KEY": "0123abcd"}, "models.chat.env.WANDB_API_KEY",
     "pulumi config set --secret --path models.chat.env.WANDB_API_KEY"),
    ("dev", {"models.chat.env.SOME_SETTING": OPENAI_KEY}, "models.chat.env.SOME_SETTING", "OpenAI-style API key"),
    ("dev", {"models.chat.env.DATABASE_URL": "postgres://app:hunter2@db:5432/app"}, "models.chat.env.DATABASE_URL",
     "URL with a user and password"),
    ("prod", {"models.chat.args": ["--api-key", "s3cr3t-value"]}, "models.chat.args[1]", "models.chat.env.<NAME>"),
    ("prod", {"models.chat.args": ["--max-model-len=8192", "--api-key=s3cr3t-value"]}, "models.chat.args[1]", "command line"),
    ("prod", {"models.chat.args": [f"--hf-token={HF_TOKEN}"]}, "models.chat.args[0]", "command line"),
    ("dev", {"images.gatewayBuild.buildArgs.GITHUB_TOKEN": "abc123def456"}, "images.gatewayBuild.buildArgs.GITHUB_TOKEN",
     "image's history"),
    ("dev", {"images.gatewayBuild.buildArgs.PIP_INDEX_URL": "https://bob:pw@pypi.example.com/simple"},
     "images.gatewayBuild.buildArgs.PIP_INDEX_URL", "image's history"),
    ("local", {"docker.runner.env.HTTPS_PROXY": "http://bob:pw@proxy:3128"}, "docker.runner.env.HTTPS_PROXY",
     "--secret --path docker.runner.env.HTTPS_PROXY"),
    ("local", {"docker.gateway.env.GATEWAY_API_KEYS": "k1,k2"}, "docker.gateway.env.GATEWAY_API_KEYS", "gatewayApiKeys"),
    ("local", {"docker.gateway.labels.auth-token": "abcdef"}, "docker.gateway.labels.auth-token", "clear text"),
    ("local", {"docker.runner.command": ["--api-key", "abcdef"]}, "docker.runner.command[1]", "command line"),
    ("dev", {"knative.registryCaBundle": PRIVATE_KEY}, "knative.registryCaBundle", "a private key"),
    ("dev", {"images.gatewayBuild.labels.source": "https://user:pw@git.example.com/repo"},
     "images.gatewayBuild.labels.source", "user and password"),
]


@pytest.mark.parametrize("stack,overrides,key,text", REFUSED, ids=[case[2] for case in REFUSED])
def test_a_credential_in_plain_config_is_refused_with_where_it_belongs(stack, overrides, key, text):
    assert_rejected(stack, overrides, key, text)


NOT_CREDENTIALS = [
    ("dev", {"models.chat.env.MAX_TOKENS": "4096"}),
    ("dev", {"models.chat.env.HF_TOKEN_PATH": "/var/run/secrets/hf/token"}),
    ("dev", {"models.chat.env.ENABLE_TOKEN_AUTH": "true"}),
    ("dev", {"models.chat.env.TOKENIZERS_PARALLELISM": "false"}),
    ("dev", {"models.chat.env.HTTPS_PROXY": "http://proxy.internal:3128"}),
    ("prod", {"models.chat.args": ["--max-num-batched-tokens", "8192", "--max-model-len=16384"]}),
    ("dev", {"images.gatewayBuild.buildArgs.PIP_INDEX_URL": "https://pypi.example.com/simple"}),
    ("local", {"docker.runner.labels.token-budget": "none"}),
]


@pytest.mark.parametrize("stack,overrides", NOT_CREDENTIALS, ids=[next(iter(case[1])) for case in NOT_CREDENTIALS])
def test_settings_that_merely_mention_a_credential_word_are_accepted(stack, overrides):
    evaluate(stack, set=overrides)


def test_a_credential_in_an_env_file_is_refused_with_the_file_named(tmp_path):
    env_file = tmp_path / "models.chat.env"
    env_file.write_text("LOG_LEVEL=debug\nWANDB_API_KEY=0123abcd\n")
    assert_rejected("local", {"docker.runner.envFiles": [str(env_file)]}, "docker.runner.envFiles[0]",
                    "WANDB_API_KEY to a credential, in a plain-text file")


def test_every_credential_is_reported_at_once():
    error, evaluation = evaluate_failure("dev", set={
        "models.chat.env.HF_TOKEN": HF_TOKEN,
        "models.chat.args": ["--api-key=abcdef"],
        "images.gatewayBuild.buildArgs.NPM_TOKEN": "abcdef",
        "models.chat.port": "eighty",
    })
    assert sorted(problem.key for problem in error.problems) == sorted([
        "models.chat.env.HF_TOKEN", "models.chat.args[0]", "images.gatewayBuild.buildArgs.NPM_TOKEN", "models.chat.port"
    ])
    assert HF_TOKEN not in str(error)
    assert evaluation.resources == []


# --- a section stored encrypted ---------------------------------------------------------------------------------

def test_credentials_in_an_encrypted_models_section_reach_the_pod_through_a_secret_only():
    evaluation = evaluate("dev", set={"models.chat.env.WANDB_API_KEY": "0123abcd"}, secrets={},
                          secret_sections=("models",))
    credentials = evaluation.one("kubernetes:core/v1:Secret", "model-runner-chat-credentials")
    assert unwrap(credentials.inputs["stringData"]) == {"WANDB_API_KEY": "0123abcd"}
    assert "0123abcd" not in repr([unwrap(r.inputs) for r in evaluation.of_type("kubernetes:core/v1:ConfigMap")])
    deployment = evaluation.one("kubernetes:apps/v1:Deployment", "model-runner-chat")
    env = unwrap(deployment.inputs)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "WANDB_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "model-runner-chat-credentials", "key": "WANDB_API_KEY"}}} in env


def test_credentials_in_an_encrypted_runner_section_reach_the_pod_through_a_secret_only():
    evaluation = evaluate("local", set={"runner.env.WANDB_API_KEY": "0123abcd"}, secrets={}, secret_sections=("runner",))
    runner = evaluation.one("docker:index/container:Container", "model-runner")
    assert isinstance(runner.inputs["envs"], Secret)
    assert "WANDB_API_KEY=0123abcd" in unwrap(runner.inputs["envs"])


def test_credentials_in_an_encrypted_docker_section_reach_the_container_as_secret_env():
    evaluation = evaluate("local", set={"docker.runner.env.WANDB_API_KEY": "0123abcd"}, secrets={},
                          secret_sections=("docker",))
    runner = evaluation.one("docker:index/container:Container", "model-runner")
    assert isinstance(runner.inputs["envs"], Secret)
    assert "WANDB_API_KEY=0123abcd" in unwrap(runner.inputs["envs"])


def test_plain_sections_stay_plain():
    evaluation = evaluate("local", set={"docker.runner.env.LOG_LEVEL": "debug"}, secrets={})
    runner = evaluation.one("docker:index/container:Container", "model-runner")
    assert not isinstance(runner.inputs["envs"], Secret)
