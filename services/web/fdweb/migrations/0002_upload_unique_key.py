"""Each upload's key in the bucket carries a random part (fdweb.models.upload_key); no change to the table."""

from django.db import migrations, models

import fdweb.models


class Migration(migrations.Migration):

    dependencies = [
        ("fdweb", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="upload",
            name="file",
            field=models.FileField(max_length=300, upload_to=fdweb.models.upload_key),
        ),
    ]
