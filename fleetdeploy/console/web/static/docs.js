// Starts Swagger UI on /docs from the console's own copy (swagger-ui-bundle), so the page keeps the CSP.
/* global SwaggerUIBundle */
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
