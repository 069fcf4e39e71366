// Another action posts the form back as step "edit": the server shows that action's fields with the
// environment and every value kept (a GET would lose them, and put extra vars in a URL).
document.querySelectorAll("select.switch-action").forEach((el) => {
  el.addEventListener("change", () => {
    const step = document.createElement("input");
    step.type = "hidden";
    step.name = "step";
    step.value = "edit";
    el.form.appendChild(step);
    el.form.submit();
  });
});

// A key/value field's "Add a row" copies its last row, emptied; without script, the form has spare rows.
document.querySelectorAll("button.add-row").forEach((button) => {
  button.hidden = false;
  button.addEventListener("click", () => {
    const rows = button.closest("fieldset").querySelector("table.pairs tbody");
    const row = rows.lastElementChild.cloneNode(true);
    row.querySelectorAll("input").forEach((input) => { input.value = ""; });
    rows.appendChild(row);
  });
});
