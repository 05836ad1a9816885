// Starts Swagger UI on this api's own contract. No inline script (the page's
// Content-Security-Policy forbids it) and nothing fetched from elsewhere:
// validatorUrl null keeps Swagger UI from sending the document to its public validator.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
  docExpansion: "list",
  tryItOutEnabled: false,
  persistAuthorization: false,
  displayRequestDuration: true,
});
