// The TLS badge in the header and the security panel (GET /api/security).

import { el, fill, fmtNumber, setText } from "./dom.js";

export function showSecurity(info, badge, panel) {
  badge.dataset.tls = info.tls ? "on" : "off";
  setText(badge, info.tls ? "TLS: ON" : "TLS: OFF");
  badge.title = `broker port: ${info.tls ? info.protocols.join(", ") : "plaintext"}; ` +
    `dashboard over HTTPS: ${info.http_tls ? "yes" : "no"}`;
  const cert = info.certificate || {};
  const days = cert.days_left;
  const facts = [
    ["Broker port", info.tls ? `TLS (${info.protocols.join(", ")})` : "plaintext"],
    ["Dashboard", info.http_tls ? "HTTPS" : "HTTP (loopback only unless --http-insecure)"],
    ["Certificate", cert.error || cert.subject || "–"],
    ["Issuer", cert.issuer || "–"],
    ["Expires", cert.not_after ? `${cert.not_after.slice(0, 10)} (${days} days)` : "–",
      days !== undefined && days < 30],
    ["Mutual TLS", info.mutual_tls ? "required" : "off"],
    ["Authentication", info.auth],
    ["Max payload", `${fmtNumber(info.limits.max_payload)} bytes`],
    ["Max connections", `${fmtNumber(info.limits.max_connections)} ` +
      `(${fmtNumber(info.limits.max_connections_per_ip)} per address)`],
    ["Plaintext refused", fmtNumber(info.rejected_plaintext), info.rejected_plaintext > 0],
    ["TLS failures", fmtNumber(info.tls_failures), info.tls_failures > 0],
    ["Bad tokens", fmtNumber(info.auth_failures), info.auth_failures > 0],
    ["Forbidden", fmtNumber(info.forbidden ?? 0)],
  ];
  fill(panel, facts.map(([term, value, warn]) => [
    el("dt", {}, term),
    el("dd", { class: warn ? "warn" : null }, value),
  ]));
}
