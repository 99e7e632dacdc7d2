// Renders /api/v1/openapi.json with the vendored Swagger UI (no CDN, no inline script).
window.addEventListener("load", function () {
  var node = document.getElementById("docs");
  window.ui = SwaggerUIBundle({ url: node.dataset.spec, dom_id: "#docs", deepLinking: true });
});
