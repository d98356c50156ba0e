"""Kafka material: broker TLS settings, client properties, ACL and SCRAM commands for operators.

Principals are party ids: ``User:cloud`` and ``User:fog/<F>``. Over SSL the broker maps the
client certificate's subject ``CN=<party id>`` to the party id with
``ssl.principal.mapping.rules``; over SASL_SSL the SCRAM-SHA-512 username is the party id.
Edges never talk to Kafka and get nothing here.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from hierfl import topics

if TYPE_CHECKING:
    from hierfl.provision.project import ProjectSpec

__all__ = [
    "acl_commands",
    "client_properties",
    "cloud_group",
    "remove_acl_commands",
    "scram_commands",
    "server_properties",
]

_SH = "#!/bin/sh\n# Written by `hierfl provision`. Set BOOTSTRAP and ADMIN_CONFIG first.\nset -eu\n"
_ACLS = 'kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG"'
_CONFIGS = 'kafka-configs.sh --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG"'


def cloud_group(federation: str) -> str:
    """The cloud's consumer group (``hierfl.cloud.service``)."""
    return f"hierfl-cloud-{federation}"


def _grants(federation: str, party: str) -> list[tuple[str, str, list[str]]]:
    """(resource option, resource name, operations) granted to ``party``."""
    agg, models = topics.aggregates(federation), topics.models(federation)
    if party == "cloud":
        return [
            ("--topic", agg, ["Read", "Describe"]),
            ("--group", cloud_group(federation), ["Read", "Describe"]),
            ("--topic", models, ["Write", "Describe"]),
        ]
    return [("--topic", agg, ["Write", "Describe"]), ("--topic", models, ["Read", "Describe"])]


def _acl_lines(federation: str, party: str, action: str) -> list[str]:
    lines = []
    for option, resource, ops in _grants(federation, party):
        op_args = " ".join(f"--operation {op}" for op in ops)
        lines.append(
            f"{_ACLS} {action} --allow-principal {shlex.quote('User:' + party)} "
            f"{op_args} {option} {shlex.quote(resource)}"
            + (" --force" if action == "--remove" else "")
        )
    return lines


def acl_commands(spec: ProjectSpec, *, revoked: Iterable[str] = ()) -> str:
    """``kafka-acls.sh`` commands granting the cloud and every (unrevoked) fog their rights.

    The cloud reads ``hierfl.<fed>.aggregates`` (in group ``hierfl-cloud-<fed>``) and writes
    ``hierfl.<fed>.models``; each fog writes the aggregates and reads the models.
    """
    gone = set(revoked)
    lines = [_SH]
    for party in ["cloud", *(f"fog/{f}" for f in spec.fogs)]:
        if party not in gone:
            lines += [f"# {party}", *_acl_lines(spec.federation, party, "--add"), ""]
    lines.append(
        "# Topics: create them as an admin (brokers/README.md), or also grant Create on the\n"
        "# topics to the cloud and the fogs; otherwise set kafka.create_topics = false.\n"
    )
    return "\n".join(lines)


def remove_acl_commands(federation: str, party: str) -> str:
    """Commands that take back a revoked party's ACLs and SCRAM credentials."""
    return "\n".join([
        f"# revoke {party}",
        *_acl_lines(federation, party, "--remove"),
        f"{_CONFIGS} --alter --delete-config SCRAM-SHA-512 --entity-type users "
        f"--entity-name {shlex.quote(party)}",
        "",
    ])


def scram_commands(passwords: Mapping[str, str]) -> str:
    """``kafka-configs.sh`` commands creating each party's SCRAM-SHA-512 user.

    WARNING: the text holds the passwords; write it with ``write_private``.
    """
    lines = [_SH]
    for party, password in passwords.items():
        # token_urlsafe passwords hold no ',', '=', ']' or quote, so no escaping is needed.
        config = f"SCRAM-SHA-512=[password={password}]"
        lines.append(
            f"{_CONFIGS} --alter --add-config {shlex.quote(config)} "
            f"--entity-type users --entity-name {shlex.quote(party)}"
        )
    return "\n".join(lines) + "\n"


def server_properties(*, ssl_port: int, sasl_port: int) -> str:
    """Broker settings for the two client listeners (merge into ``server.properties``)."""
    return f"""\
# Client listeners of a hierfl federation, written by `hierfl provision`. Merge into your
# server.properties (and add them to listener.security.protocol.map / advertised.listeners).
listeners=SSL://:{ssl_port},SASL_SSL://:{sasl_port}
ssl.keystore.type=PEM
# server.pem = server.key (PKCS#8) + server.crt; keep it 0600, readable by the broker only.
ssl.keystore.location=server.pem
ssl.truststore.type=PEM
ssl.truststore.location=ca.crt
ssl.endpoint.identification.algorithm=https
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\\
  org.apache.kafka.common.security.scram.ScramLoginModule required;
# The client certificate's subject is CN=<party id>: make the principal the party id.
ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
"""


def client_properties(*, bootstrap: str, sasl_user: str | None = None,
                      sasl_password: str | None = None) -> str:
    """Java client properties (kafka-console-*.sh, tools) for a party, paths relative to its kit.

    Args:
        bootstrap: bootstrap servers.
        sasl_user: with ``sasl_password``: SASL_SSL/SCRAM-SHA-512 instead of SSL client auth.
        sasl_password: the party's SCRAM password (the result is then secret).

    Returns:
        The properties text.
    """
    head = (
        f"# Run Kafka tools from the kit folder (relative paths).\nbootstrap.servers={bootstrap}\n"
    )
    trust = "ssl.truststore.type=PEM\nssl.truststore.location=ca.crt\n"
    if sasl_user is None or sasl_password is None:
        return head + (
            "security.protocol=SSL\n" + trust + "ssl.keystore.type=PEM\n"
            "# client.pem = client.key + client.crt (Java reads both from one PEM file)\n"
            "ssl.keystore.location=client.pem\n"
        )
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{sasl_user}" password="{sasl_password}";'
    )
    return head + (
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n" + trust
        + f"sasl.jaas.config={jaas}\n"
    )
