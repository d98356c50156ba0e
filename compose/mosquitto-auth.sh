#!/bin/sh
# One-shot job of the compose stack: writes mosquitto's password file and ACL into the
# mosquitto-auth volume, from the passwords in compose/.env and the blocks of
# brokers/acl.template. Runs in the eclipse-mosquitto image (for mosquitto_passwd) before the
# broker starts, and again on every `docker compose up`, so changed passwords take effect.
#
# Users: one per fog (its own topics only), one shared by the scaled `edge` service (any edge id
# under any fog of the federation: the demo's replicas get their ids at start-up, so they cannot
# have their own entries), and `monitor` (read-only; the broker's health check uses it).
# A production deployment renders one `edge` block per device instead; see brokers/README.md.
set -eu

template=${ACL_TEMPLATE:-/init/acl.template}
out=${AUTH_DIR:-/mosquitto/auth}
: "${FEDERATION:?}" "${FOGS:?}" "${EDGE_USER:=edge}" "${MONITOR_USER:=monitor}"

check_id() {
    case "$1" in
        '' | *[!A-Za-z0-9_-]*)
            echo "mosquitto-auth: invalid id '$1' (use A-Z a-z 0-9 _ -)" >&2
            exit 1
            ;;
    esac
}

password_of() { # variable name -> its value, or fail naming the variable
    eval "value=\${$1:-}"
    if [ -z "$value" ]; then
        echo "mosquitto-auth: set $1 in compose/.env (see compose/.env.example)" >&2
        exit 1
    fi
    printf '%s' "$value"
}

# One role's block of the template, placeholders filled in: block ROLE FEDERATION FOG EDGE MONITOR
block() {
    sed -n "/^# >>> $1:/,/^# <<< $1\$/p" "$template" |
        sed -e "s/\${FEDERATION}/$2/g" -e "s/\${FOG}/$3/g" -e "s/\${EDGE}/$4/g" -e "s/\${MONITOR}/$5/g"
}

check_id "$FEDERATION"
check_id "$EDGE_USER"
check_id "$MONITOR_USER"

new="$out/.new"
rm -rf "$new"
mkdir -p "$new"
: >"$new/passwd"
: >"$new/acl"

for fog in $FOGS; do
    check_id "$fog"
    var="MQTT_PASSWORD_$(printf '%s' "$fog" | tr 'a-z-' 'A-Z_')"
    # An assignment, so that set -e stops the script when the password is missing.
    pw=$(password_of "$var")
    mosquitto_passwd -b "$new/passwd" "$fog" "$pw"
    block fog "$FEDERATION" "$fog" "" "" >>"$new/acl"
done

# The shared edge user: the edge block with both the fog and the edge level left as wildcards.
pw=$(password_of MQTT_PASSWORD_EDGE)
mosquitto_passwd -b "$new/passwd" "$EDGE_USER" "$pw"
block edge "$FEDERATION" "+" "+" "" | sed "s/^user .*/user $EDGE_USER/" >>"$new/acl"

pw=$(password_of MQTT_PASSWORD_MONITOR)
mosquitto_passwd -b "$new/passwd" "$MONITOR_USER" "$pw"
block monitor "$FEDERATION" "" "" "$MONITOR_USER" >>"$new/acl"

# mosquitto runs as its own user and warns about (newer releases: refuse) files that others can
# read.
if id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$new/passwd" "$new/acl"
fi
chmod 0600 "$new/passwd" "$new/acl"
mv -f "$new/passwd" "$out/passwd"
mv -f "$new/acl" "$out/acl"
rmdir "$new"
echo "mosquitto-auth: wrote $out/passwd and $out/acl for fogs: $FOGS; users $EDGE_USER, $MONITOR_USER"
