"""The owner's page of the gateway: licences with status, usage and last seen, and a revoke button.

Plain server-rendered HTML (no script, no build step); every value is escaped.
"""

import html

from ..registry import iso_time

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ccc; padding: 0.35rem 0.8rem; text-align: left; white-space: nowrap; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.revoked { color: #a00; }
"""


def usage_rows(vault):
    """Every user with their licence status and gateway usage, by id (`ipguard users usage` prints the same)."""
    usage = vault.registry.usage()
    rows = []
    for user in vault.users():
        seen = usage.get(user.id, {})
        rows.append({"id": user.id, "name": user.name, "active": user.active, "issued": iso_time(user.issued_at),
                     "revoked": iso_time(user.revoked_at), "licences": int(seen.get("licences") or 0),
                     "requests": int(seen.get("requests") or 0), "images": int(seen.get("images") or 0),
                     "refused": int(seen.get("refused") or 0), "marked": int(seen.get("marked") or 0),
                     "last_seen": iso_time(seen.get("last_seen"))})
    return rows


def _when(iso):
    """An ISO time as the page shows it: 2026-12-02 05:48:47 UTC."""
    return iso.replace("T", " ").replace("+00:00", " UTC") if iso else "never"


def page(gateway):
    """The owner's page as an HTML string."""
    gateway.audit.flush()  # show what has happened up to now
    token = html.escape(gateway.admin_token)
    lines = []
    for row in usage_rows(gateway.vault):
        name = html.escape(row["name"])
        status = "active" if row["active"] else f"revoked {html.escape(_when(row['revoked']))}"
        button = (f'<form method="post" action="/admin/revoke"><input type="hidden" name="token" value="{token}">'
                  f'<input type="hidden" name="name" value="{name}"><button type="submit" '
                  f'aria-label="revoke {name}">Revoke</button></form>') if row["active"] else ""
        lines.append(
            f'<tr class="{"active" if row["active"] else "revoked"}" data-user="{name}"><td>{row["id"]}</td>'
            f'<td>{name}</td><td>{status}</td><td class="number">{row["licences"]}</td>'
            f'<td class="number">{row["requests"]}</td><td class="number">{row["images"]}</td>'
            f'<td class="number">{row["refused"]}</td><td>{html.escape(_when(row["last_seen"]))}</td>'
            f"<td>{button}</td></tr>")
    body = "\n".join(lines) or '<tr><td colspan="9">No users yet: <code>ipguard users add NAME</code></td></tr>'
    title = f"ipguard: licences of {html.escape(gateway.name)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body><h1>{title}</h1>
<p>Model: {html.escape(gateway.backend.description)}. Vault: {html.escape(str(gateway.vault.path))}.</p>
<table><thead><tr><th>id</th><th>user</th><th>licence</th><th>licences issued</th><th>requests</th>
<th>images</th><th>refused</th><th>last seen</th><th></th></tr></thead>
<tbody>
{body}
</tbody></table></body></html>
"""
