#!/usr/bin/env python3
"""What a user does first in pgAdmin, done over HTTP from the host (scripts/compose-e2e).

    pgadmin_check.py <base URL> <login email> <login password> <PostgreSQL password>

Logs in with the compose login, finds the server that grafana/pgadmin/servers.json registers,
connects to it with the PostgreSQL password, and lists its databases. Prints what it saw and
exits 1 if any step fails or the `events` database is not listed. Python 3 standard library
only; it speaks the same HTTP endpoints pgAdmin's own browser UI calls.
"""

import http.cookiejar
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request


def main(base, email, password, db_password):
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base}/login", timeout=30).read().decode()
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page) or re.search(
        r'csrfToken["\']?\s*[:=]\s*["\']([^"\']+)', page)
    if not match:
        raise SystemExit("pgAdmin's login page has no CSRF token")
    token = match.group(1)

    def call(path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{base}{path}", data=data, headers={
            "X-pgA-CSRFToken": token, "Content-Type": "application/json"})
        try:
            reply = json.loads(opener.open(request, timeout=30).read())
        except urllib.error.HTTPError as e:
            if e.code == 410:  # pgAdmin's answer for a node list that is empty
                return []
            raise
        return reply.get("data") or reply.get("result") or []

    form = urllib.parse.urlencode(
        {"email": email, "password": password, "csrf_token": token}).encode()
    landed = opener.open(f"{base}/authenticate/login", form, timeout=30).geturl()
    if "/browser" not in landed:
        raise SystemExit(f"login as {email} failed (landed on {landed})")
    print(f"pgAdmin: logged in as {email}")

    servers = [(group["_id"], server)
               for group in call("/browser/server_group/nodes/")
               for server in call(f"/browser/server/nodes/{group['_id']}")]
    if not servers:
        raise SystemExit("pgAdmin lists no server: servers.json was not loaded")
    group, server = servers[0]
    print(f"pgAdmin: registered server '{server['label']}' ({server['host']}, user {server['username']})")
    connected = call(f"/browser/server/connect/{group}/{server['_id']}", {"password": db_password})
    if not connected.get("connected"):
        raise SystemExit(f"pgAdmin could not connect to {server['host']}: {connected}")
    databases = [d["label"] for d in call(f"/browser/database/nodes/{group}/{server['_id']}")]
    print(f"pgAdmin: connected (server version {connected['version']}); databases: {', '.join(databases)}")
    if "events" not in databases:
        raise SystemExit("pgAdmin does not list the events database")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    main(*sys.argv[1:])
