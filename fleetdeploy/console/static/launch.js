// Changing the action reloads the form for that action (its releases and its extra-vars schema).
document.querySelectorAll("select.autosubmit").forEach((el) => {
  el.addEventListener("change", () => el.form.submit());
});
