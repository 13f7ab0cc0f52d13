// The API description, rendered by the vendored Swagger UI (no CDN: it works offline).
window.addEventListener("load", () => {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#docs", deepLinking: true });
});
