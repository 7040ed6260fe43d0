// Starts Swagger UI on the API's own document. A file, not an inline script: the page's
// Content-Security-Policy allows scripts from this origin only.
window.ui = SwaggerUIBundle({
  url: document.getElementById("swagger-ui").dataset.url,
  dom_id: "#swagger-ui",
  // A token typed into "Authorize" is forgotten with the page: never kept in localStorage.
  persistAuthorization: false,
  // No validator badge: it would load an image from validator.swagger.io.
  validatorUrl: null,
});
